"""cuda_library: compiles .cu sources with nvcc when the toolkit is present.

Without the toolkit (HAS_CUDA is False in @local_cuda//:defs.bzl) the target is
built from its fallback sources instead.

With simulated = True the same sources are also compiled by the host compiler
for the CUDA CPU simulation (//kernels/cuda/sim): `name` is then an alias for
`name_gpu` (nvcc) or, under --config=cudasim, `name_sim`, and both can be
depended on directly (a test of the simulated backend uses `name_sim`).
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

# The simulation compiles CUDA sources as C++: `#pragma unroll` is nvcc's, and
# products must not be fused into sums where nvcc's __fmul_rn forbids it.
SIM_COPTS = ["-Wno-unknown-pragmas", "-ffp-contract=off"]

def cuda_library(name, srcs, hdrs = [], deps = [], fallback_srcs = [], cu_hdrs = [], simulated = False, **kwargs):
    """A C++ library whose .cu sources are compiled by nvcc.

    Args:
      name: the cc_library name.
      srcs: .cu and .cc sources used when the CUDA toolkit is present.
      hdrs: public headers.
      deps: cc_library dependencies (headers visible to nvcc too).
      fallback_srcs: sources used instead of srcs when no toolkit is present.
      cu_hdrs: headers from other packages that the .cu files include (nvcc
        runs in a genrule, which sees only the files it is given).
      simulated: also build `name_sim` for the CUDA simulation (see above).
      **kwargs: passed to cc_library.
    """
    if simulated:
        _cuda_sim_library(name + "_sim", srcs, hdrs, deps, fallback_srcs, **kwargs)
        native.alias(
            name = name,
            actual = select({
                "//kernels/cuda:cudasim": name + "_sim",
                "//conditions:default": name + "_gpu",
            }),
        )
        name = name + "_gpu"
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
        srcs = [s for s in cc_srcs if not s.endswith(".cuh")] + objs,
        hdrs = hdrs,
        deps = deps + ["@local_cuda//:cuda"],
        linkstatic = True,
        **kwargs
    )

def _cuda_sim_library(name, srcs, hdrs, deps, fallback_srcs, **kwargs):
    """The sources of a cuda_library compiled for the CUDA simulation.

    Each .cu file is compiled through a generated .cc that includes the
    simulation's device layer first, so the kernel source itself is unchanged.
    """
    if not HAS_CUDA:
        # The simulation needs the toolkit's headers (cuda_bf16.h and the
        # runtime's declarations); without them, the fallback as for the GPU.
        native.cc_library(name = name, srcs = fallback_srcs, hdrs = hdrs, deps = deps, **kwargs)
        return
    wrappers = []
    cu_files = []
    cc_srcs = []
    for src in srcs:
        if src.endswith(".cu"):
            cu_files.append(src)
            wrapper = name + "_" + src.replace("/", "_")[:-3] + ".cc"
            native.genrule(
                name = wrapper + "_gen",
                outs = [wrapper],
                cmd = "printf '%s\\n' '// Generated: {src} for the CUDA simulation.' '#include \"kernels/cuda/sim/device.h\"' '#include \"{pkg}/{src}\"' > $@".format(
                    pkg = native.package_name(),
                    src = src,
                ),
            )
            wrappers.append(wrapper)
        elif src.endswith(".cuh"):
            cu_files.append(src)
        else:
            cc_srcs.append(src)
    native.cc_library(
        name = name,
        srcs = cc_srcs + wrappers,
        hdrs = hdrs,
        textual_hdrs = cu_files,
        copts = SIM_COPTS,
        deps = deps + ["//kernels/cuda/sim:cudasim"],
        **kwargs
    )

def _unique(labels):
    seen = {}
    for label in labels:
        seen[label] = True
    return seen.keys()
