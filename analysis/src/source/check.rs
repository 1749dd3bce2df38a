//! Checking each file's footer before any query runs, so a bad file is
//! reported by name with its reason, and the table schema files are read as.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use slicetrace_schema::{SCHEMA_VERSION, SCHEMA_VERSION_KEY, TABLE_KEY};

use super::{SourceError, TableKind};

/// Checks one file's footer: magic, decodable metadata, table, schema version
/// and the columns the CLI needs. Returns its row count.
pub(super) async fn check_file(
    store: &dyn ObjectStore,
    path: &ObjPath,
    size: u64,
    name: &str,
    want: TableKind,
) -> Result<u64, SourceError> {
    let md = check_footer(store, path, size, name, want).await?;
    Ok(md.file_metadata().num_rows().max(0) as u64)
}

/// [`check_file`], returning the decoded footer (row-group statistics
/// included) for pruning.
pub(super) async fn check_footer(
    store: &dyn ObjectStore,
    path: &ObjPath,
    size: u64,
    name: &str,
    want: TableKind,
) -> Result<ParquetMetaData, SourceError> {
    let store_err = |source| SourceError::Store {
        location: name.to_string(),
        source,
    };
    let starts_with_magic = || async {
        if size < 4 {
            return Ok::<bool, SourceError>(false);
        }
        let head = store.get_range(path, 0..4).await.map_err(store_err)?;
        Ok(head.as_ref() == b"PAR1")
    };
    if size < 12 {
        return Err(if starts_with_magic().await? {
            SourceError::Truncated(name.to_string())
        } else {
            SourceError::NotParquet(name.to_string())
        });
    }
    let tail = store
        .get_range(path, size - 8..size)
        .await
        .map_err(store_err)?;
    if &tail[4..8] != b"PAR1" {
        return Err(if starts_with_magic().await? {
            SourceError::Truncated(name.to_string())
        } else {
            SourceError::NotParquet(name.to_string())
        });
    }
    let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if len + 12 > size {
        return Err(SourceError::Truncated(name.to_string()));
    }
    let footer = store
        .get_range(path, size - 8 - len..size - 8)
        .await
        .map_err(store_err)?;
    let md = ParquetMetaDataReader::decode_metadata(&footer).map_err(|source| {
        SourceError::CorruptFooter {
            file: name.to_string(),
            source,
        }
    })?;
    let kv = md.file_metadata().key_value_metadata();
    let get = |k: &str| {
        kv.and_then(|v| v.iter().find(|e| e.key == k))
            .and_then(|e| e.value.clone())
    };
    if let Some(table) = get(TABLE_KEY) {
        if table != want.name() {
            let hint = if table == want.other().name() {
                format!(" (pass --table {table} to read it)")
            } else {
                String::new()
            };
            return Err(SourceError::ForeignSchema {
                table: want,
                file: name.to_string(),
                reason: format!("it belongs to table {table:?}, not {:?}{hint}", want.name()),
            });
        }
    }
    if let Some(v) = get(SCHEMA_VERSION_KEY) {
        let newer = match v.trim().parse::<u32>() {
            Ok(n) => n > SCHEMA_VERSION,
            Err(_) => true,
        };
        if newer {
            return Err(SourceError::NewerSchema {
                file: name.to_string(),
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
    }
    let schema = parquet::arrow::parquet_to_arrow_schema(md.file_metadata().schema_descr(), kv)
        .map_err(|source| SourceError::CorruptFooter {
            file: name.to_string(),
            source,
        })?;
    check_columns(&schema, &want.schema()).map_err(|reason| SourceError::ForeignSchema {
        table: want,
        file: name.to_string(),
        reason,
    })?;
    Ok(md)
}

/// Every non-nullable column of the table must be present, and every column
/// that is present must have the table's type. Missing nullable columns are
/// fine (they read as null), as are extra columns (a newer, compatible agent).
fn check_columns(file: &Schema, want: &Schema) -> Result<(), String> {
    for f in want.fields() {
        match file.field_with_name(f.name()) {
            Err(_) if !f.is_nullable() => {
                return Err(format!("missing required column {:?}", f.name()))
            }
            Err(_) => {}
            Ok(found) if !found.data_type().equals_datatype(f.data_type()) => {
                let compatible_list = matches!(
                    (found.data_type(), f.data_type()),
                    (DataType::List(a), DataType::List(b)) if a.data_type() == b.data_type()
                );
                if !compatible_list {
                    return Err(format!(
                        "column {:?} has type {}, expected {}",
                        f.name(),
                        found.data_type(),
                        f.data_type()
                    ));
                }
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The table schema: the file columns (without `node` when it comes from the
/// partition path, so the name is not duplicated) followed by the partition
/// columns that DataFusion appends. Columns a file lacks read as null.
pub(super) fn table_schema(table: TableKind, hive: bool) -> SchemaRef {
    let full = table.schema();
    if !hive {
        return full;
    }
    let fields: Vec<Field> = full
        .fields()
        .iter()
        .filter(|f| f.name() != "node")
        .map(|f| f.as_ref().clone())
        .collect();
    Arc::new(Schema::new_with_metadata(fields, full.metadata().clone()))
}
