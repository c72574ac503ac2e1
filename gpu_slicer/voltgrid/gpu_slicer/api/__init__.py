"""The kubelet's deviceplugin/v1beta1 API: the vendored proto and the Python modules generated from it.

The generated ``*_pb2*`` modules are checked in so that installing Voltgrid needs no protoc; the
regeneration check in the tests keeps them equal to what :mod:`.codegen` produces from the proto.
"""
