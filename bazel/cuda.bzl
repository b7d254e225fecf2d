"""cuda_library: compiles .cu sources with nvcc when the toolkit is present.

Without the toolkit (HAS_CUDA is False in @local_cuda//:defs.bzl) the target is
built from its fallback sources instead.
"""

load("@local_cuda//:defs.bzl", "HAS_CUDA", "NVCC")

# sm_90 for Hopper plus PTX for older and newer GPUs (portable build).
NVCC_FLAGS = [
    "-std=c++17",
    "-O3",
    "--use_fast_math",
    "-Xcompiler=-fPIC",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_80,code=compute_80",
]

def cuda_library(name, srcs, hdrs = [], deps = [], fallback_srcs = [], cu_hdrs = [], **kwargs):
    """A C++ library whose .cu sources are compiled by nvcc.

    Args:
      name: the cc_library name.
      srcs: .cu and .cc sources used when the CUDA toolkit is present.
      hdrs: public headers.
      deps: cc_library dependencies (headers visible to nvcc too).
      fallback_srcs: sources used instead of srcs when no toolkit is present.
      cu_hdrs: headers from other packages that the .cu files include (nvcc
        runs in a genrule, which sees only the files it is given).
      **kwargs: passed to cc_library.
    """
    if not HAS_CUDA:
        native.cc_library(name = name, srcs = fallback_srcs, hdrs = hdrs, deps = deps, **kwargs)
        return
    objs = []
    cc_srcs = []
    for src in srcs:
        if not src.endswith(".cu"):
            cc_srcs.append(src)
            continue
        obj = name + "_" + src.replace("/", "_")[:-3] + ".o"
        native.genrule(
            name = obj + "_nvcc",
            srcs = _unique([src] + hdrs + cu_hdrs + native.glob(["**/*.h", "**/*.cuh"])),
            outs = [obj],
            cmd = "{nvcc} {flags} -I. -I$(GENDIR) -c $(location {src}) -o $@".format(
                nvcc = NVCC,
                flags = " ".join(NVCC_FLAGS),
                src = src,
            ),
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = cc_srcs + objs,
        hdrs = hdrs,
        deps = deps + ["@local_cuda//:cuda"],
        linkstatic = True,
        **kwargs
    )

def _unique(labels):
    seen = {}
    for label in labels:
        seen[label] = True
    return seen.keys()
