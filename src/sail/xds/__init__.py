"""The wire: the ADS client and the xDS codec.

`sail.xds.codec` turns Envoy v3 protobuf resources into the frozen `sail.model` objects
(validating them, so an invalid resource is NACKed with a reason naming the field) and turns
model objects back into protobuf for the registry. Protobuf never leaves this package.
"""
