"""``--from parquet``: one record per row of Parquet files.

SRC is a ``.parquet`` file, a directory of them (recursive, sorted; names
starting with '.' or '_' are skipped, as Spark's ``_SUCCESS`` is) or a glob.
``--key-column NAME`` makes that column the records' keys; the other columns
become the record as ``ffrecord.tools.columns`` describes (one column's bytes,
or the ``parts`` layout). Row groups are read one at a time, so files larger
than memory convert.
"""

from .table import TableSource, find_files, pyarrow_module

SUFFIXES = (".parquet", ".pq")


class ParquetSource(TableSource):
    kind = "parquet"

    def __init__(self, path, key_column=None):
        super().__init__(path, key_column=key_column)
        self.files = find_files(path, SUFFIXES, "Parquet")

    def open_file(self, path):
        pyarrow_module()
        import pyarrow.parquet as pq

        return pq.ParquetFile(path, memory_map=True)

    def schema(self, handle):
        return handle.schema_arrow

    def chunk_rows(self, handle):
        meta = handle.metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def read_chunk(self, handle, chunk):
        return handle.read_row_group(chunk)
