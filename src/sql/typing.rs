//! Placeholder until the inference module lands (being written in parallel).
use crate::sql::types::ValueType;

pub trait Schema {
    fn column_type(&self, table: &str, column: &str) -> Option<ValueType>;
}

pub fn infer_parameter_types(
    _sql: &str,
    n_params: usize,
    _schema: &dyn Schema,
) -> Vec<Option<ValueType>> {
    vec![None; n_params]
}

pub fn infer_column_types(
    _sql: &str,
    declared: &[Option<ValueType>],
    _schema: &dyn Schema,
) -> Vec<ValueType> {
    declared
        .iter()
        .map(|d| d.unwrap_or(ValueType::Text))
        .collect()
}
