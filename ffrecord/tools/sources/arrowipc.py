"""``--from arrow``: one record per row of Arrow IPC files.

SRC is an Arrow IPC file in the file format (``.arrow``, ``.feather`` v2,
``.ipc``) or the stream format, a directory of them (recursive, sorted) or a
glob. Columns become records as for ``--from parquet``
(``ffrecord.tools.columns``). Files are memory-mapped, so a record batch is
read without copying the whole file.
"""

from .table import TableSource, find_files, pyarrow_module

SUFFIXES = (".arrow", ".feather", ".ipc", ".arrows")


def open_ipc(path):
    """All record batches of an IPC file, in either format, from a memory map."""
    pa = pyarrow_module()
    source = pa.memory_map(path, "r")
    try:
        reader = pa.ipc.open_file(source)
        return reader.schema, [reader.get_batch(i) for i in range(reader.num_record_batches)]
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_stream(source)
        return reader.schema, list(reader)


class ArrowSource(TableSource):
    kind = "arrow"

    def __init__(self, path, key_column=None):
        super().__init__(path, key_column=key_column)
        self.files = self.find(path)

    def find(self, path):
        return find_files(path, SUFFIXES, "Arrow IPC")

    def open_file(self, path):
        return open_ipc(path)  # batches are views of the mapping, not copies

    def schema(self, handle):
        return handle[0]

    def chunk_rows(self, handle):
        return [batch.num_rows for batch in handle[1]]

    def read_chunk(self, handle, chunk):
        return handle[1][chunk]
