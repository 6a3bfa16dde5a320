{
  "targets": [
    {
      "target_name": "mote",
      "sources": [
        "native/addon.cc",
        "native/bind_matmul.cc",
        "native/bind_lora.cc",
        "native/bind_model.cc",
        "native/bind_adamw.cc",
        "native/cpu/adamw.cc",
        "native/cpu/attention.cc",
        "native/cpu/blas.cc",
        "native/cpu/copy_rows.cc",
        "native/cpu/dispatch.cc",
        "native/cpu/embedding.cc",
        "native/cpu/lora.cc",
        "native/cpu/matmul.cc",
        "native/cpu/residual.cc",
        "native/cpu/rmsnorm.cc",
        "native/cpu/rope.cc",
        "native/cpu/swiglu.cc",
        "native/cpu/threads.cc",
        "native/cpu/xent.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "libraries": ["-ldl"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fopenmp-simd", "-fexceptions"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "OTHER_CPLUSPLUSFLAGS": ["-O3"]
      },
      "msvs_settings": { "VCCLCompilerTool": { "ExceptionHandling": 1 } }
    }
  ]
}
