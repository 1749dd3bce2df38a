//! The README's column tables must equal the code's, cell for cell.

use slicetrace_schema::{
    health_schema, probes_schema, rollups_schema, ColumnDoc, COLUMNS, HEALTH_COLUMNS,
    ROLLUP_COLUMNS,
};

fn readme_table(readme: &str, heading: &str) -> Vec<Vec<String>> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no heading {heading}"));
    readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| column"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn check(docs: &[ColumnDoc], table: Vec<Vec<String>>, schema: arrow::datatypes::SchemaRef) {
    assert_eq!(
        table.len(),
        docs.len(),
        "README and code list different numbers of columns"
    );
    for ((doc, row), field) in docs.iter().zip(&table).zip(schema.fields()) {
        let expect = vec![
            format!("`{}`", doc.name),
            doc.arrow_type.to_string(),
            if doc.nullable { "yes" } else { "no" }.to_string(),
            doc.unit.to_string(),
            doc.meaning.to_string(),
        ];
        assert_eq!(
            row, &expect,
            "README row differs from code for column {}",
            doc.name
        );
        assert_eq!(field.name(), doc.name);
        assert_eq!(
            field.is_nullable(),
            doc.nullable,
            "nullability of {}",
            doc.name
        );
    }
}

#[test]
fn readme_documents_every_probes_column_as_the_code_defines_it() {
    let readme = include_str!("../README.md");
    check(
        COLUMNS,
        readme_table(readme, "## Table `probes`"),
        probes_schema(),
    );
}

#[test]
fn readme_documents_every_health_column_as_the_code_defines_it() {
    let readme = include_str!("../README.md");
    check(
        HEALTH_COLUMNS,
        readme_table(readme, "## Table `health`"),
        health_schema(),
    );
}

#[test]
fn readme_documents_every_rollups_column_as_the_code_defines_it() {
    let readme = include_str!("../README.md");
    check(
        ROLLUP_COLUMNS,
        readme_table(readme, "## Table `rollups`"),
        rollups_schema(),
    );
}

#[test]
fn required_issue_columns_exist_with_their_types() {
    use arrow::datatypes::{DataType as D, TimeUnit};
    let s = probes_schema();
    let list = D::List(std::sync::Arc::new(arrow::datatypes::Field::new(
        "item",
        D::Utf8,
        true,
    )));
    let required = [
        ("ts", D::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))),
        ("node", D::Utf8),
        ("gpu_uuid", D::Utf8),
        ("gpu_index", D::UInt32),
        ("gpu_name", D::Utf8),
        ("backend", D::Utf8),
        ("kernel", D::Utf8),
        ("shape", D::Utf8),
        ("flops", D::Float64),
        ("cycle", D::UInt64),
        ("burst_seq", D::UInt32),
        ("gpu_ms", D::Float64),
        ("wall_ms", D::Float64),
        ("queue_ms", D::Float64),
        ("tflops", D::Float64),
        ("correct", D::Boolean),
        ("rel_error", D::Float64),
        ("sm_clock_mhz", D::UInt32),
        ("mem_clock_mhz", D::UInt32),
        ("gpu_util_pct", D::UInt32),
        ("mem_util_pct", D::UInt32),
        ("power_w", D::Float64),
        ("temp_c", D::UInt32),
        ("throttle_reasons", D::UInt64),
        ("fb_used_mib", D::UInt64),
        ("gpu_processes", D::UInt32),
        ("pods", list.clone()),
        ("pod_count", D::UInt32),
        ("replicas", D::UInt32),
        ("sharing_strategy", D::Utf8),
        ("active_pods", list),
        ("trace_id", D::Utf8),
        ("span_id", D::Utf8),
    ];
    for (name, ty) in required {
        let f = s
            .field_with_name(name)
            .unwrap_or_else(|_| panic!("no column {name}"));
        assert_eq!(f.data_type(), &ty, "type of {name}");
    }
}
