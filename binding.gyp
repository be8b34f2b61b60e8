# node-gyp build of the same addon CMakeLists.txt builds (keep the two in sync): every native/core/*.cpp and
# native/binding/*.cpp into build/Release/peft_node.node, against the libtorch scripts/libtorch.js locates
# (PEFT_NODE_LIBTORCH / LIBTORCH, a Python torch 2.13.0, the cache, else a fetch; see that script).
# gyp has no glob: the source lists come from `node -p` command expansions, run in this file's directory.
{
  "targets": [
    {
      "target_name": "peft_node",
      "variables": {
        "libtorch_lib": "<!(node scripts/libtorch.js locate --print lib)",
        "libtorch_cuda": "<!(node scripts/libtorch.js locate --print cuda)"
      },
      "sources": [
        "<!@(node -p \"require('fs').readdirSync('native/core').filter(f=>f.endsWith('.cpp')).sort().map(f=>'native/core/'+f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/binding').filter(f=>f.endsWith('.cpp')).sort().map(f=>'native/binding/'+f).join(' ')\")"
      ],
      "include_dirs": [
        "native",
        # Declarations of the Gloo names c10d's ProcessGroupGloo.hpp mentions (libtorch ships no Gloo headers).
        "native/gloo_decl",
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!@(node scripts/libtorch.js locate --print include)"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_CPP_EXCEPTIONS",
        "NODE_ADDON_API_CPP_EXCEPTIONS_ALL",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        # libtorch >= 2.7 ships only the new (cxx11) libstdc++ ABI; its CMake config no longer says so, g++ defaults
        # to it, and spelling it out makes a mismatch a compile-time fact instead of a link error.
        "_GLIBCXX_USE_CXX11_ABI=1",
        # What libtorch's CMake targets add to consumers (USE_DISTRIBUTED, ...), read from its Caffe2Targets.cmake.
        "<!@(node scripts/libtorch.js locate --print defines)"
      ],
      # Node's common.gypi compiles addons with -fno-exceptions -fno-rtti -std=gnu++17; libtorch needs C++20 (its
      # CMake target sets CXX_STANDARD 20), exceptions (node-addon-api C++ exceptions, c10::Error) and RTTI.
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
      "cflags_cc": ["-std=gnu++20", "-fexceptions", "-frtti", "-Wno-unused-parameter"],
      "cflags!": ["-fno-exceptions"],
      "libraries": [
        "-L<(libtorch_lib)",
        # --no-as-needed: keep libtorch (and libtorch_cuda) loaded even where no symbol is referenced directly,
        # since their static initialisers register the CPU/CUDA kernels (CMake's torch target does the same).
        "-Wl,--no-as-needed",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        "-Wl,--as-needed",
        "-Wl,-rpath,<(libtorch_lib)"
      ],
      "configurations": {
        # Same as CMake's Release (-O3 comes from common.gypi).
        "Release": { "defines": ["NDEBUG"] }
      },
      "conditions": [
        ["libtorch_cuda==1", {
          "defines": ["PEFT_NODE_WITH_CUDA=1"],
          "libraries": ["-Wl,--no-as-needed", "-ltorch_cuda", "-lc10_cuda", "-Wl,--as-needed"]
        }]
      ]
    }
  ]
}
