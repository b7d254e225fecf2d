"""Offline stand-in for rules_proto: protos are compiled by //bazel:proto.bzl."""

def proto_library(**kwargs):
    native.proto_library(**kwargs)
