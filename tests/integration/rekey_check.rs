//! rekey and check
