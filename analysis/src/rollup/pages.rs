//! Reading a rollup file held in memory with one zstd decompression
//! context per thread.
//!
//! The `parquet` crate creates a codec for every column chunk it reads, and
//! its zstd codec holds a compression *and* a decompression context: two
//! allocations of tens of KB, initialised, used once (or never) and freed.
//! Rollup files are small (a few hundred rows) and a fleet check over an
//! hour of a 10,000-node fleet reads 20 column chunks in each of 40,000
//! files: the contexts and the allocations around them were a quarter of
//! the fold's CPU. Here a zstd column chunk is read as if it were stored
//! uncompressed (the crate then creates no codec and hands back the pages'
//! bytes as stored), and each page is decompressed with the thread's one
//! [`zstd::bulk::Decompressor`]. Chunks of any other codec are read as the
//! crate reads them: rollup files are written with snappy since the
//! `fleet` benchmark of 2026-12-07 (`slicetrace_schema::writer_properties`
//! says why), whose codec holds no context worth reusing; zstd rollup files
//! written before still read here without the per-chunk contexts.
//!
//! The batches are the same as [`ParquetRecordBatchReaderBuilder`]'s for
//! the same projection (a test reads a file both ways).
//!
//! [`ParquetRecordBatchReaderBuilder`]: parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, RowGroups};
use parquet::arrow::{parquet_to_arrow_field_levels, ProjectionMask};
use parquet::basic::Compression;
use parquet::column::page::{Page, PageIterator, PageMetadata, PageReader};
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use parquet::file::properties::{ReaderProperties, ReaderPropertiesPtr};
use parquet::file::serialized_reader::SerializedPageReader;

/// The largest page this reader decompresses into a buffer sized from the
/// frame header; a larger (or unstated) size is streamed instead, so that a
/// corrupt header cannot ask for an absurd allocation.
const MAX_SIZED_PAGE: u64 = 1 << 30;

thread_local! {
    /// This thread's zstd decompression context, made on first use.
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Decompresses one zstd page body into a new buffer, with the thread's
/// context when the frame states its size.
fn unzstd(src: &[u8]) -> Result<Vec<u8>> {
    let size = zstd::zstd_safe::get_frame_content_size(src)
        .ok()
        .flatten()
        .filter(|&n| n <= MAX_SIZED_PAGE)
        .and_then(|n| usize::try_from(n).ok());
    if let Some(size) = size {
        let mut out = Vec::with_capacity(size);
        let done = DCTX.with(|d| -> std::io::Result<()> {
            let mut d = d.borrow_mut();
            let ctx = match d.as_mut() {
                Some(c) => c,
                None => d.insert(zstd::bulk::Decompressor::new()?),
            };
            ctx.decompress_to_buffer(src, &mut out).map(|_| ())
        });
        // A frame followed by more frames does not fit the first one's
        // size: stream it below.
        if done.is_ok() && out.len() == size {
            return Ok(out);
        }
    }
    zstd::stream::decode_all(src).map_err(|e| ParquetError::General(format!("zstd page: {e}")))
}

/// A zstd column chunk read as stored, its pages decompressed here.
struct ZstdPages {
    inner: SerializedPageReader<Bytes>,
}

impl ZstdPages {
    /// `page` with its compressed bytes decompressed in place (every other
    /// field as read).
    fn decompress(mut page: Page) -> Result<Page> {
        match &mut page {
            Page::DataPage { buf, .. } | Page::DictionaryPage { buf, .. } => {
                *buf = Bytes::from(unzstd(buf)?);
            }
            Page::DataPageV2 {
                buf,
                def_levels_byte_len,
                rep_levels_byte_len,
                is_compressed: true,
                ..
            } => {
                // The levels come first, never compressed.
                let levels = usize::try_from(*def_levels_byte_len)
                    .ok()
                    .zip(usize::try_from(*rep_levels_byte_len).ok())
                    .and_then(|(d, r)| d.checked_add(r))
                    .filter(|&n| n <= buf.len())
                    .ok_or_else(|| {
                        ParquetError::General("implausible v2 page level lengths".into())
                    })?;
                let body = unzstd(&buf[levels..])?;
                let mut out = Vec::with_capacity(levels + body.len());
                out.extend_from_slice(&buf[..levels]);
                out.extend_from_slice(&body);
                *buf = Bytes::from(out);
            }
            Page::DataPageV2 { .. } => {}
        }
        Ok(page)
    }
}

impl Iterator for ZstdPages {
    type Item = Result<Page>;

    fn next(&mut self) -> Option<Self::Item> {
        self.get_next_page().transpose()
    }
}

impl PageReader for ZstdPages {
    fn get_next_page(&mut self) -> Result<Option<Page>> {
        self.inner
            .get_next_page()?
            .map(Self::decompress)
            .transpose()
    }

    fn peek_next_page(&mut self) -> Result<Option<PageMetadata>> {
        self.inner.peek_next_page()
    }

    fn skip_next_page(&mut self) -> Result<()> {
        self.inner.skip_next_page()
    }

    fn at_record_boundary(&mut self) -> Result<bool> {
        self.inner.at_record_boundary()
    }
}

/// One column's page readers, a row group after another.
struct Chunks(std::vec::IntoIter<Result<Box<dyn PageReader>>>);

impl Iterator for Chunks {
    type Item = Result<Box<dyn PageReader>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

impl PageIterator for Chunks {}

/// Every row group of a file held in memory.
struct InMemory {
    meta: Arc<ParquetMetaData>,
    body: Arc<Bytes>,
    props: ReaderPropertiesPtr,
}

impl InMemory {
    fn chunk(&self, rg: &RowGroupMetaData, i: usize) -> Result<Box<dyn PageReader>> {
        let c = rg.column(i);
        let rows = usize::try_from(rg.num_rows()).unwrap_or(0);
        if matches!(c.compression(), Compression::ZSTD(_)) {
            let stored = c
                .clone()
                .into_builder()
                .set_compression(Compression::UNCOMPRESSED)
                .build()?;
            let inner = SerializedPageReader::new_with_properties(
                self.body.clone(),
                &stored,
                rows,
                None,
                self.props.clone(),
            )?;
            Ok(Box::new(ZstdPages { inner }))
        } else {
            Ok(Box::new(SerializedPageReader::new_with_properties(
                self.body.clone(),
                c,
                rows,
                None,
                self.props.clone(),
            )?))
        }
    }
}

impl RowGroups for InMemory {
    fn num_rows(&self) -> usize {
        self.meta
            .row_groups()
            .iter()
            .map(|rg| usize::try_from(rg.num_rows()).unwrap_or(0))
            .sum()
    }

    fn column_chunks(&self, i: usize) -> Result<Box<dyn PageIterator>> {
        let readers: Vec<Result<Box<dyn PageReader>>> = self
            .meta
            .row_groups()
            .iter()
            .map(|rg| self.chunk(rg, i))
            .collect();
        Ok(Box::new(Chunks(readers.into_iter())))
    }

    fn row_groups(&self) -> Box<dyn Iterator<Item = &RowGroupMetaData> + '_> {
        Box::new(self.meta.row_groups().iter())
    }

    fn metadata(&self) -> &ParquetMetaData {
        &self.meta
    }
}

/// A batch reader over the leaf columns `keep` of the file `body`, whose
/// footer is `meta`, `batch` rows at a time. The Arrow types are those of
/// the Parquet schema (no embedded Arrow schema is applied, as the rollup
/// readers' builder is told to skip it).
pub(crate) fn reader(
    meta: Arc<ParquetMetaData>,
    body: Bytes,
    keep: Vec<usize>,
    batch: usize,
) -> Result<ParquetRecordBatchReader> {
    let schema = meta.file_metadata().schema_descr();
    let mask = ProjectionMask::leaves(schema, keep);
    let levels = parquet_to_arrow_field_levels(schema, mask, None)?;
    let groups = InMemory {
        meta,
        body: Arc::new(body),
        props: Arc::new(ReaderProperties::builder().build()),
    };
    ParquetRecordBatchReader::try_new_with_row_groups(&levels, &groups, batch, None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rollup::synth::{generate, RollupSynth};
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::ZstdLevel;
    use parquet::file::properties::{WriterProperties, WriterVersion};
    use slicetrace_schema::{rollups_schema, writer_properties};

    /// Rollup rows as the generator writes them (the agent's writer
    /// properties: zstd, data pages v1, dictionaries).
    fn rollup_file() -> Bytes {
        let tmp = tempfile::tempdir().unwrap();
        let s = RollupSynth {
            nodes: 1,
            gpus_per_node: 3,
            end_ns: 1_796_601_600_000_000_000,
            span_secs: 900,
            hours: false,
            file_secs: 900,
            arrivals_per_min: 300,
            draws: 40,
            seed: 7,
            threads: 1,
        };
        generate(tmp.path(), &s).unwrap();
        let dirs = super::super::read::list(tmp.path(), None).unwrap();
        let f = &dirs[0].files[0];
        Bytes::from(std::fs::read(f).unwrap())
    }

    /// The batches of `body` read by the parquet crate's own reader.
    fn by_builder(body: &Bytes, keep: &[usize]) -> Vec<RecordBatch> {
        let b = ParquetRecordBatchReaderBuilder::try_new(body.clone()).unwrap();
        let mask = ProjectionMask::leaves(b.parquet_schema(), keep.to_vec());
        b.with_projection(mask)
            .with_batch_size(100)
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// The batches of `body` read here.
    fn by_pages(body: &Bytes, keep: &[usize]) -> Vec<RecordBatch> {
        let meta = ParquetRecordBatchReaderBuilder::try_new(body.clone())
            .unwrap()
            .metadata()
            .clone();
        reader(meta, body.clone(), keep.to_vec(), 100)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// `body`'s rows written again with `props`.
    fn rewrite(body: &Bytes, props: WriterProperties) -> Bytes {
        let all: Vec<usize> = (0..rollups_schema().fields().len()).collect();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, rollups_schema(), Some(props)).unwrap();
        for b in by_builder(body, &all) {
            // The builder applied the embedded schema (with the table's
            // metadata): the same columns.
            let b = RecordBatch::try_new(rollups_schema(), b.columns().to_vec()).unwrap();
            w.write(&b).unwrap();
        }
        w.close().unwrap();
        Bytes::from(out)
    }

    fn compare(body: &Bytes) {
        let n = rollups_schema().fields().len();
        let all: Vec<usize> = (0..n).collect();
        // Columns as the fleet check reads them: a subset, sketches last.
        let some: Vec<usize> = (0..n).filter(|i| i % 3 != 1).collect();
        for keep in [all, some, vec![0]] {
            let want = by_builder(body, &keep);
            let got = by_pages(body, &keep);
            assert!(!want.is_empty());
            assert_eq!(want.len(), got.len());
            for (w, g) in want.iter().zip(&got) {
                assert!(w.num_rows() > 0);
                // Same arrays; the builder's schema also carries the file's
                // embedded Arrow metadata, absent here by design.
                assert_eq!(w.columns(), g.columns(), "{keep:?}");
                for (wf, gf) in w.schema().fields().iter().zip(g.schema().fields()) {
                    assert_eq!(wf.name(), gf.name());
                    assert_eq!(wf.data_type(), gf.data_type());
                }
            }
        }
    }

    #[test]
    fn zstd_files_read_the_same_as_the_parquet_crate_reads_them() {
        let body = rollup_file();
        compare(&body);
        // Data pages v2 (levels stored uncompressed before the body).
        let v2 = writer_properties(&rollups_schema(), 64, "test")
            .into_builder()
            .set_writer_version(WriterVersion::PARQUET_2_0)
            .build();
        compare(&rewrite(&body, v2));
        // Several row groups, higher level.
        let small = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(9).unwrap()))
            .set_max_row_group_row_count(Some(7))
            .build();
        compare(&rewrite(&body, small));
    }

    #[test]
    fn other_codecs_read_through_the_crate_codecs() {
        let body = rollup_file();
        for c in [Compression::SNAPPY, Compression::UNCOMPRESSED] {
            let p = WriterProperties::builder().set_compression(c).build();
            compare(&rewrite(&body, p));
        }
    }

    #[test]
    fn zstd_pages_without_a_stated_size_or_in_several_frames_are_streamed() {
        let data: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let one = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(unzstd(&one).unwrap(), data);
        // Two frames: the first's size is not the whole.
        let (a, b) = data.split_at(4_000);
        let mut two = zstd::bulk::compress(a, 3).unwrap();
        two.extend(zstd::bulk::compress(b, 3).unwrap());
        assert_eq!(unzstd(&two).unwrap(), data);
        // A streamed frame states no size.
        let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut e, &data).unwrap();
        let streamed = e.finish().unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&streamed)
                .ok()
                .flatten(),
            None
        );
        assert_eq!(unzstd(&streamed).unwrap(), data);
        assert!(unzstd(b"not zstd").is_err());
    }
}
