/*
 * isal_inflate: gunzip into a caller-provided window with Intel ISA-L (igzip).
 *
 * JS API (Node-API, context-aware, safe in worker_threads):
 *
 *   inflateInto(input: Uint8Array, out: Uint8Array,
 *               outOffset: number, outLength: number): [status, produced, consumed]
 *
 * Decompresses one or more concatenated gzip members from `input` into
 * out[outOffset .. outOffset + outLength). Nothing outside that window is ever
 * written. See README.md for the status codes; in short:
 *
 *   0 ok, 1 window too small, 2 truncated, 3 not gzip, 4 corrupt deflate data,
 *   5 CRC32 mismatch, 6 ISIZE mismatch, 7 other error.
 *
 * `produced` / `consumed` always describe the members that were decoded and
 * verified completely: on status 0 that is everything (consumed < input.length
 * only when the rest starts with a zero byte, which Node's gunzip ignores as
 * padding); on any other status it is the prefix before the member that failed
 * (bytes of the window past `produced` may have been overwritten).
 *
 * Invalid arguments (not a Uint8Array, window outside `out`, ...) throw.
 *
 * Threading: every Node-API environment (main thread, each worker) gets its own
 * heap-allocated `struct inflate_state` (~85 KiB) as instance data, created once
 * when the addon is loaded in that environment and freed when it is torn down.
 * A call touches only its own environment's state, so no locking is needed and
 * no memory is allocated per call (except the 3-element result array).
 */
#include <node_api.h>
#include <isa-l/crc.h>
#include <isa-l/igzip_lib.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
  ST_OK = 0,
  ST_OUT_FULL = 1,
  ST_TRUNCATED = 2,
  ST_NOT_GZIP = 3,
  ST_CORRUPT = 4,
  ST_BAD_CRC = 5,
  ST_BAD_ISIZE = 6,
  ST_OTHER = 7
};

static uint32_t load_le32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
         ((uint32_t)p[3] << 24);
}

/*
 * The checks zlib's inflate makes on the fixed part of a gzip header, at the
 * same points: the magic once 2 bytes are there, method and flags once 4 are
 * (ISA-L's parser does not reject reserved flag bits). So, like zlib, a lone
 * non-gzip byte is "truncated" (2) and two or more are "not gzip" (3).
 * Returns ST_OK when what is there looks like the start of a gzip member.
 */
static int precheck_gzip_header(const uint8_t *p, size_t n) {
  if (n >= 2 && (p[0] != 0x1f || p[1] != 0x8b)) return ST_NOT_GZIP; /* "incorrect header check" */
  if (n >= 4 && p[2] != 8) return ST_NOT_GZIP;            /* "unknown compression method" */
  if (n >= 4 && (p[3] & 0xe0) != 0) return ST_NOT_GZIP;   /* "unknown header flags set" */
  return ST_OK;
}

#define U32_CAP(x) ((x) > UINT32_MAX ? UINT32_MAX : (uint32_t)(x))

/*
 * Decodes exactly one gzip member starting at `in` into `out`. On ST_OK sets
 * *member_in to the member's compressed length (header + deflate + trailer)
 * and *member_out to its decompressed length.
 */
static int inflate_member(struct inflate_state *st, const uint8_t *in, size_t in_len,
                          uint8_t *out, size_t out_len, size_t *member_in,
                          size_t *member_out) {
  struct isal_gzip_header hdr;
  int r = precheck_gzip_header(in, in_len);
  if (r != ST_OK) return r;

  isal_inflate_init(st);
  st->next_in = (uint8_t *)in;
  st->avail_in = U32_CAP(in_len);

  /* Parse the header ourselves (instead of letting crc_flag = ISAL_GZIP do it)
   * so that a header error (bad magic, FHCRC mismatch) is never confused with
   * a trailer CRC error: both come back as ISAL_INCORRECT_CHECKSUM otherwise. */
  isal_gzip_header_init(&hdr); /* NULL extra/name/comment buffers: skip them */
  r = isal_read_gzip_header(st, &hdr);
  if (r == ISAL_END_INPUT) return in_len > UINT32_MAX ? ST_OTHER : ST_TRUNCATED;
  if (r < 0) return ST_NOT_GZIP; /* INVALID_WRAPPER, UNSUPPORTED_METHOD, FHCRC */
  if (r != ISAL_DECOMP_OK) return ST_OTHER;

  /* Raw deflate body; ISA-L computes the CRC32 of the output and checks it and
   * ISIZE against the 8-byte trailer that follows the deflate data. */
  st->crc_flag = ISAL_GZIP_NO_HDR_VER;
  st->next_out = out;
  st->avail_out = U32_CAP(out_len);

  /* One-shot decode straight into the window: the window is the whole output
   * space, so there is nothing to resume, and this avoids the stateful API's
   * copy through its internal 64 KiB buffer. It never writes past avail_out
   * and reports ISAL_OUT_OVERFLOW when more output would follow. */
  r = isal_inflate_stateless(st);

  switch (r) {
    case ISAL_DECOMP_OK:
      *member_in = (size_t)(st->next_in - in);
      *member_out = (size_t)(st->next_out - out);
      return ST_OK;
    case ISAL_END_INPUT:
      return in_len > UINT32_MAX ? ST_OTHER : ST_TRUNCATED;
    case ISAL_OUT_OVERFLOW:
      return ST_OUT_FULL;
    case ISAL_INVALID_BLOCK:
    case ISAL_INVALID_SYMBOL:
    case ISAL_INVALID_LOOKBACK:
      return ST_CORRUPT;
    case ISAL_INCORRECT_CHECKSUM: {
      /* The trailer was read completely: it is the 8 bytes before next_in. */
      size_t end = (size_t)(st->next_in - in);
      if (end < 8) return ST_OTHER;
      if (load_le32(in + end - 8) != st->crc) return ST_BAD_CRC;
      if (load_le32(in + end - 4) != st->total_out) return ST_BAD_ISIZE;
      return ST_OTHER;
    }
    default:
      return ST_OTHER;
  }
}

/* Decodes all members; mirrors what Node's zlib gunzip accepts. */
static int inflate_all(struct inflate_state *st, const uint8_t *in, size_t in_len,
                       uint8_t *out, size_t out_len, size_t *produced,
                       size_t *consumed) {
  size_t pos = 0, made = 0;
  int status;
  for (;;) {
    size_t mi = 0, mo = 0;
    status = inflate_member(st, in + pos, in_len - pos, out + made, out_len - made,
                            &mi, &mo);
    if (status != ST_OK) break;
    pos += mi;
    made += mo;
    /* Like Node (src/node_zlib.cc): after a member, more input that starts with
     * a non-zero byte must be another member; a zero byte ends the stream and
     * everything from there on is ignored as padding. */
    if (pos == in_len || in[pos] == 0) break;
  }
  *produced = made;
  *consumed = pos;
  return status;
}

/* ---------------------------------------------------------------- Node-API */

#define NAPI_CALL(env, call)                                           \
  do {                                                                 \
    if ((call) != napi_ok) {                                           \
      const napi_extended_error_info *info_ = NULL;                    \
      bool pending_ = false;                                           \
      napi_get_last_error_info((env), &info_);                         \
      napi_is_exception_pending((env), &pending_);                     \
      if (!pending_)                                                   \
        napi_throw_error((env), NULL,                                  \
                         info_ && info_->error_message                 \
                             ? info_->error_message                    \
                             : "isal_inflate: Node-API call failed");  \
      return NULL;                                                     \
    }                                                                  \
  } while (0)

static uint8_t empty_byte; /* stands in for the data pointer of empty/detached arrays */

/* Returns 0 and fills *data / *len when v is a Uint8Array (Buffer included). */
static int get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is_ta = false;
  napi_typedarray_type type;
  size_t length = 0;
  void *ptr = NULL;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return -1;
  if (napi_get_typedarray_info(env, v, &type, &length, &ptr, NULL, NULL) != napi_ok)
    return -1;
  if (type != napi_uint8_array && type != napi_uint8_clamped_array) return -1;
  *data = ptr != NULL ? (uint8_t *)ptr : &empty_byte;
  *len = ptr != NULL ? length : 0;
  return 0;
}

/* Returns 0 and fills *out when v is a non-negative integral number. */
static int get_size(napi_env env, napi_value v, size_t *out) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return -1;
  if (napi_get_value_double(env, v, &d) != napi_ok) return -1;
  if (!(d >= 0) || d > 9007199254740991.0 || d != floor(d)) return -1;
  *out = (size_t)d;
  return 0;
}

static napi_value InflateInto(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  void *data = NULL;
  uint8_t *in, *out;
  size_t in_len, out_len, off, len, produced = 0, consumed = 0;
  napi_value result, v;
  int status;

  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, &data));
  if (argc < 4) {
    napi_throw_type_error(env, NULL,
                          "inflateInto(input, out, outOffset, outLength): 4 arguments expected");
    return NULL;
  }
  if (get_bytes(env, argv[0], &in, &in_len) != 0) {
    napi_throw_type_error(env, NULL, "inflateInto: input must be a Uint8Array");
    return NULL;
  }
  if (get_bytes(env, argv[1], &out, &out_len) != 0) {
    napi_throw_type_error(env, NULL, "inflateInto: out must be a Uint8Array");
    return NULL;
  }
  if (get_size(env, argv[2], &off) != 0 || get_size(env, argv[3], &len) != 0) {
    napi_throw_type_error(env, NULL,
                          "inflateInto: outOffset and outLength must be non-negative integers");
    return NULL;
  }
  if (off > out_len || len > out_len - off) {
    napi_throw_range_error(env, NULL,
                           "inflateInto: outOffset + outLength exceeds out.length");
    return NULL;
  }

  status = inflate_all((struct inflate_state *)data, in, in_len, out + off, len, &produced,
                       &consumed);

  NAPI_CALL(env, napi_create_array_with_length(env, 3, &result));
  NAPI_CALL(env, napi_create_uint32(env, (uint32_t)status, &v));
  NAPI_CALL(env, napi_set_element(env, result, 0, v));
  NAPI_CALL(env, napi_create_double(env, (double)produced, &v));
  NAPI_CALL(env, napi_set_element(env, result, 1, v));
  NAPI_CALL(env, napi_create_double(env, (double)consumed, &v));
  NAPI_CALL(env, napi_set_element(env, result, 2, v));
  return result;
}

/*
 * crc32(bytes: Uint8Array, crc?: number): number, the CRC32 of gzip and zlib
 * (zlib's crc32(crc, bytes)), with ISA-L's folding code (PCLMULQDQ where the
 * CPU has it): used to read a written file back at commit time.
 */
static napi_value Crc32(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  uint8_t *bytes;
  size_t len;
  uint32_t crc = 0;
  napi_value result;

  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || get_bytes(env, argv[0], &bytes, &len) != 0) {
    napi_throw_type_error(env, NULL, "crc32: bytes must be a Uint8Array");
    return NULL;
  }
  if (argc >= 2) {
    napi_valuetype t;
    double d;
    NAPI_CALL(env, napi_typeof(env, argv[1], &t));
    if (t != napi_undefined) {
      if (t != napi_number || napi_get_value_double(env, argv[1], &d) != napi_ok || !(d >= 0) ||
          d > 4294967295.0 || d != floor(d)) {
        napi_throw_type_error(env, NULL, "crc32: crc must be an integer from 0 to 2^32 - 1");
        return NULL;
      }
      crc = (uint32_t)d;
    }
  }
  crc = len > 0 ? crc32_gzip_refl(crc, bytes, (uint64_t)len) : crc;
  NAPI_CALL(env, napi_create_uint32(env, crc, &result));
  return result;
}

/*
 * One piece file read whole into out[0, room): open without ever waiting (O_NONBLOCK: a FIFO named
 * like a piece cannot hold the thread), fstat, refuse what is not a regular file, read to the end
 * (one byte past `max` tells a file over the limit; one past `room`, a file that needs more), close.
 * Answers the bytes read (>= 0), or:
 *   -1            more than `max` bytes,
 *   -2            more than `room` bytes but not past `max`: read it again with more room,
 *   -(100 + k)    not a regular file: k = 1 FIFO, 2 folder, 3 socket, 4 device, 5 other,
 *   -(1000 + e)   the system call failed with errno e.
 * Touches no JavaScript value: readPieces runs it on libuv's thread pool.
 */
static double read_piece(const char *path, uint8_t *out, size_t room, size_t max) {
  struct stat st;
  size_t want, got = 0;
  double answer;
  int fd;
  if ((fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)) < 0) return -(1000.0 + errno);
  if (fstat(fd, &st) != 0) {
    answer = -(1000.0 + errno);
    close(fd);
    return answer;
  }
  if (!S_ISREG(st.st_mode)) {
    answer = S_ISFIFO(st.st_mode)                          ? -101
             : S_ISDIR(st.st_mode)                         ? -102
             : S_ISSOCK(st.st_mode)                        ? -103
             : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? -104
                                                          : -105;
    close(fd);
    return answer;
  }
  {
    int failed = 0;
    want = room < max + 1 ? room : max + 1;
    while (got < want) {
      ssize_t r = read(fd, out + got, want - got);
      if (r < 0) {
        if (errno == EINTR) continue;
        failed = errno;
        break;
      }
      if (r == 0) break;
      got += (size_t)r;
    }
    if (failed != 0) {
      answer = -(1000.0 + failed);
    } else if (got > max) {
      answer = -1;
    } else if (got == want) {
      /* the window is full: is there more? */
      uint8_t probe;
      ssize_t r;
      do r = read(fd, &probe, 1); while (r < 0 && errno == EINTR);
      answer = r < 0 ? -(1000.0 + errno) : r == 0 ? (double)got : got == max ? -1 : -2;
    } else {
      answer = (double)got;
    }
  }
  close(fd);
  return answer;
}

/*
 * readPieces(paths: string, out: Uint8Array, at: number, gap: number, max: number,
 *            sizes: Float64Array, done: (count: number) => void): void
 *
 * A batch of pieces read, each by read_piece, as one piece of async work on libuv's thread pool:
 * no JavaScript runs, and no thread of ferry's own is needed, while the files are read. `paths`
 * holds the pieces' paths, each one followed by a NUL. Piece j goes `gap` bytes past where the one
 * before ended (the first at at + gap), leaving room for the gaps of the pieces after it; sizes[j]
 * gets its answer (read_piece's codes). Reading stops at the first answer below zero. `done(count)`
 * is called on the main thread with the pieces read: count < the number of paths means
 * sizes[count] says why piece `count` was not. `out` and `sizes` must not be touched until then.
 * Throws TypeError/RangeError on invalid arguments only.
 */
typedef struct {
  napi_async_work work;
  napi_ref out_ref, sizes_ref, done_ref;
  char *paths;
  size_t paths_len, count, done;
  uint8_t *out;
  size_t out_len, at, gap, max;
  double *sizes;
} read_batch;

static void read_batch_execute(napi_env env, void *data) {
  read_batch *b = (read_batch *)data;
  const char *p = b->paths, *end = b->paths + b->paths_len;
  size_t at = b->at;
  (void)env;
  for (size_t j = 0; j < b->count; j++) {
    size_t len = strlen(p);
    size_t start = at + b->gap, reserve = (b->count - j - 1) * b->gap;
    double answer;
    if (len >= PATH_MAX) answer = -(1000.0 + ENAMETOOLONG);
    else if (start > b->out_len || reserve > b->out_len - start) answer = -2;
    else answer = read_piece(p, b->out + start, b->out_len - reserve - start, b->max);
    b->sizes[j] = answer;
    if (answer < 0) break;
    at = start + (size_t)answer;
    b->done = j + 1;
    p += len + 1;
    if (p > end) break;
  }
}

static void read_batch_complete(napi_env env, napi_status status, void *data) {
  read_batch *b = (read_batch *)data;
  napi_value done, global, arg;
  (void)status;
  if (napi_get_reference_value(env, b->done_ref, &done) == napi_ok && napi_get_global(env, &global) == napi_ok &&
      napi_create_double(env, (double)b->done, &arg) == napi_ok) {
    napi_call_function(env, global, done, 1, &arg, NULL);
  }
  napi_delete_reference(env, b->out_ref);
  napi_delete_reference(env, b->sizes_ref);
  napi_delete_reference(env, b->done_ref);
  napi_delete_async_work(env, b->work);
  free(b->paths);
  free(b);
}

static napi_value ReadPieces(napi_env env, napi_callback_info info) {
  size_t argc = 7, sizes_len, paths_len;
  napi_value argv[7], name;
  napi_typedarray_type type;
  napi_valuetype t;
  void *sizes_data;
  read_batch *b;

  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 7) {
    napi_throw_type_error(env, NULL, "readPieces(paths, out, at, gap, max, sizes, done): 7 arguments expected");
    return NULL;
  }
  if (napi_get_value_string_utf8(env, argv[0], NULL, 0, &paths_len) != napi_ok) {
    napi_throw_type_error(env, NULL, "readPieces: paths must be a string");
    return NULL;
  }
  b = (read_batch *)calloc(1, sizeof(read_batch));
  if (b == NULL || (b->paths = (char *)malloc(paths_len + 1)) == NULL) {
    free(b);
    napi_throw_error(env, NULL, "readPieces: out of memory");
    return NULL;
  }
  napi_get_value_string_utf8(env, argv[0], b->paths, paths_len + 1, &b->paths_len);
  for (size_t i = 0; i < b->paths_len; i++) if (b->paths[i] == '\0') b->count++;
  if (get_bytes(env, argv[1], &b->out, &b->out_len) != 0) {
    napi_throw_type_error(env, NULL, "readPieces: out must be a Uint8Array");
    goto fail;
  }
  if (get_size(env, argv[2], &b->at) != 0 || get_size(env, argv[3], &b->gap) != 0 || get_size(env, argv[4], &b->max) != 0) {
    napi_throw_type_error(env, NULL, "readPieces: at, gap and max must be non-negative integers");
    goto fail;
  }
  if (napi_get_typedarray_info(env, argv[5], &type, &sizes_len, &sizes_data, NULL, NULL) != napi_ok || type != napi_float64_array) {
    napi_throw_type_error(env, NULL, "readPieces: sizes must be a Float64Array");
    goto fail;
  }
  if (sizes_len < b->count) {
    napi_throw_range_error(env, NULL, "readPieces: sizes is shorter than the paths");
    goto fail;
  }
  b->sizes = (double *)sizes_data;
  if (napi_typeof(env, argv[6], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, NULL, "readPieces: done must be a function");
    goto fail;
  }
  NAPI_CALL(env, napi_create_reference(env, argv[1], 1, &b->out_ref));
  NAPI_CALL(env, napi_create_reference(env, argv[5], 1, &b->sizes_ref));
  NAPI_CALL(env, napi_create_reference(env, argv[6], 1, &b->done_ref));
  NAPI_CALL(env, napi_create_string_utf8(env, "ferry.readPieces", NAPI_AUTO_LENGTH, &name));
  NAPI_CALL(env, napi_create_async_work(env, NULL, name, read_batch_execute, read_batch_complete, b, &b->work));
  NAPI_CALL(env, napi_queue_async_work(env, b->work));
  return NULL;
fail:
  free(b->paths);
  free(b);
  return NULL;
}

/*
 * tcpRoundTrip(fd: number): number, the kernel's smoothed round trip of a TCP socket in
 * milliseconds (TCP_INFO's tcpi_rtt), or -1 when it cannot be read. Measured by the kernel from
 * the handshake on, so a busy event loop does not inflate it.
 */
static napi_value TcpRoundTrip(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  size_t fd;
  struct tcp_info ti;
  socklen_t len = sizeof(ti);
  double answer = -1;
  napi_value result;

  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || get_size(env, argv[0], &fd) != 0 || fd > 0x7fffffff) {
    napi_throw_type_error(env, NULL, "tcpRoundTrip: fd must be a non-negative integer");
    return NULL;
  }
  memset(&ti, 0, sizeof(ti));
  if (getsockopt((int)fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && len >= offsetof(struct tcp_info, tcpi_rtt) + sizeof(ti.tcpi_rtt))
    answer = ti.tcpi_rtt / 1000.0;
  NAPI_CALL(env, napi_create_double(env, answer, &result));
  return result;
}

static void free_state(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

/* Context-aware: runs once per environment (main thread and each worker). */
NAPI_MODULE_INIT() {
  void *state = NULL;
  napi_value fn;

  /* Reuse this environment's state if the addon is initialised again in it
   * (napi_set_instance_data would drop the old pointer without finalising). */
  NAPI_CALL(env, napi_get_instance_data(env, &state));
  if (state == NULL) {
    state = malloc(sizeof(struct inflate_state));
    if (state == NULL) {
      napi_throw_error(env, NULL, "isal_inflate: out of memory");
      return NULL;
    }
    memset(state, 0, sizeof(struct inflate_state));
    if (napi_set_instance_data(env, state, free_state, NULL) != napi_ok) {
      free(state);
      napi_throw_error(env, NULL, "isal_inflate: napi_set_instance_data failed");
      return NULL;
    }
  }

  NAPI_CALL(env, napi_create_function(env, "inflateInto", NAPI_AUTO_LENGTH, InflateInto,
                                      state, &fn));
  NAPI_CALL(env, napi_set_named_property(env, exports, "inflateInto", fn));
  NAPI_CALL(env, napi_create_function(env, "crc32", NAPI_AUTO_LENGTH, Crc32, NULL, &fn));
  NAPI_CALL(env, napi_set_named_property(env, exports, "crc32", fn));
  NAPI_CALL(env, napi_create_function(env, "readPieces", NAPI_AUTO_LENGTH, ReadPieces, NULL, &fn));
  NAPI_CALL(env, napi_set_named_property(env, exports, "readPieces", fn));
  NAPI_CALL(env, napi_create_function(env, "tcpRoundTrip", NAPI_AUTO_LENGTH, TcpRoundTrip, NULL, &fn));
  NAPI_CALL(env, napi_set_named_property(env, exports, "tcpRoundTrip", fn));
  return exports;
}
