//! The PolicySync protocol and the internal message format (protobuf, tonic). Filled by the operator issue.
