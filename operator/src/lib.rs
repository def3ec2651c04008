//! The operator: the policy index, reconcilers and the PolicySync server. Filled by the operator issue.
