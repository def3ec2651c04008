//! The dataplane: policy sync client, MQTT front-end, HTTP and WebSocket adapters, the bus. Filled by the dataplane issues.
