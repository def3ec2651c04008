//! The invalid-variant table: valid example manifests with one mutation each that the API server must refuse.
