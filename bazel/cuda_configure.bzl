"""CUDA toolkit detection for Bazel 4, fully offline.

cuda_configure() makes the repository @local_cuda. When nvcc is found (under
$CUDA_PATH or /usr/local/cuda) it exposes the toolkit's headers and libraries and
sets HAS_CUDA = True in @local_cuda//:defs.bzl; otherwise HAS_CUDA = False and
cuda_library() in cuda.bzl builds its CPU-only fallback sources instead, so that a machine
without the toolkit still builds and tests everything else.
"""

def _cuda_configure_impl(ctx):
    root = ctx.os.environ.get("CUDA_PATH", "/usr/local/cuda")
    has_cuda = ctx.path(root + "/bin/nvcc").exists
    if has_cuda:
        ctx.symlink(root + "/include", "include")
        ctx.symlink(root + "/lib64", "lib64")
        ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "cuda",
    hdrs = glob(["include/**/*.h", "include/**/*.hpp", "include/**/*.cuh", "include/**/*.inl"]),
    includes = ["include"],
    linkopts = [
        "-L{root}/lib64",
        "-Wl,-rpath,{root}/lib64",
        "-lcublasLt",
        "-lcublas",
        "-lcudart",
    ],
)

# The toolkit's headers alone (no libraries): for the CUDA simulation
# (//kernels/cuda/sim), which defines the runtime and cuBLASLt calls itself.
cc_library(
    name = "headers",
    hdrs = glob(["include/**/*.h", "include/**/*.hpp", "include/**/*.cuh", "include/**/*.inl"]),
    includes = ["include"],
)

cc_library(
    name = "nccl",
    linkopts = ["-L{root}/lib64", "-Wl,-rpath,{root}/lib64", "-lnccl"],
    deps = [":cuda"],
)
""".format(root = root))
    else:
        ctx.file("BUILD", "# No CUDA toolkit was found; CUDA targets build their fallbacks.\n")
    ctx.file("defs.bzl", "HAS_CUDA = {}\nNVCC = \"{}\"\n".format(has_cuda, root + "/bin/nvcc"))

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["CUDA_PATH"],
    local = True,
)
