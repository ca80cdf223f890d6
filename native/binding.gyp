{
  "targets": [
    {
      "target_name": "isal_inflate",
      "sources": ["isal_inflate.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags_c": ["-std=gnu11", "-O3", "-fvisibility=hidden"],
      "libraries": ["-lisal"]
    }
  ]
}
