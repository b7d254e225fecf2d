"""prefopt_fuzz_target: a libFuzzer target and its regression test."""

def prefopt_fuzz_target(name, deps, data = []):
    """One parser's fuzz target, from `<name>.cc` (LLVMFuzzerTestOneInput).

    Makes three targets:
      <name>_lib: the fuzz target's code;
      <name>: a binary; with --config=fuzz (clang, .bazelrc) libFuzzer's,
          otherwise regression_main's, which runs the inputs it is given;
      <name>_regression_test: runs every file of corpus/<name>/ (the seeds
          and each input that once failed) in the regular suite.

    Args:
      name: the target, e.g. "safetensors_fuzzer".
      deps: the libraries it fuzzes.
      data: files it reads at run time (from its runfiles folder).
    """
    native.cc_library(
        name = name + "_lib",
        testonly = True,
        srcs = [name + ".cc"],
        deps = deps + [":fuzz_util"],
        alwayslink = True,
    )
    native.cc_binary(
        name = name,
        testonly = True,
        data = data,
        linkopts = select({
            ":fuzzing": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
        deps = [":" + name + "_lib"] + select({
            ":fuzzing": [],
            "//conditions:default": [":regression_main"],
        }),
    )
    native.cc_test(
        name = name + "_regression_test",
        size = "small",
        args = ["tests/fuzz/corpus/" + name],
        data = data + native.glob(["corpus/" + name + "/*"]),
        deps = [
            ":" + name + "_lib",
            ":regression_main",
        ],
    )
