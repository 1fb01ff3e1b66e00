// Bindings of the checkpoint writer (checkpoint_io.h) into ffrecord._core.
// Errors are ffrecord::Error, translated by the translator bindings.cpp
// registers. The GIL is released while bytes are copied, hashed and written.
// Memory passed as raw addresses belongs to the caller, who keeps it alive.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <vector>

#include "checkpoint_io.h"
#include "parallel_copy.h"

namespace py = pybind11;
using namespace ffrecord;

namespace {

// A C-contiguous view of any buffer-protocol object, kept alive by `info`;
// or an (address, size) pair of ints, for memory the caller keeps alive (the
// checkpoint package passes tensor memory this way, saving a numpy view per
// small tensor).
WritePiece piece_of(const py::handle& obj, py::buffer_info& info) {
  if (py::isinstance<py::tuple>(obj)) {
    auto t = py::reinterpret_borrow<py::tuple>(obj);
    if (t.size() != 2) throw py::value_error("a raw piece is an (address, size) pair");
    auto address = t[0].cast<uintptr_t>();
    auto size = t[1].cast<uint64_t>();
    if (!address && size) throw py::value_error("a raw piece has a null address");
    return {reinterpret_cast<const uint8_t*>(address), size};
  }
  info = py::reinterpret_borrow<py::buffer>(obj).request();
  py::ssize_t expect = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expect)
      throw py::value_error("checkpoint pieces must be C-contiguous buffers");
    expect *= info.shape[d];
  }
  return {static_cast<const uint8_t*>(info.ptr), static_cast<uint64_t>(info.size * info.itemsize)};
}

using U64Array = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>;
using U32Array = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>;

template <typename T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
  return out;
}

}  // namespace

void bind_checkpoint(py::module_& m) {
  py::class_<CheckpointFileWriter>(m, "CheckpointFileWriter")
      .def(py::init([](const std::string& path, uint64_t buffer_bytes, unsigned buffers, unsigned io_threads,
                       bool direct) {
             py::gil_scoped_release nogil;
             return std::make_unique<CheckpointFileWriter>(
                 path, CheckpointWriterOptions{buffer_bytes, buffers, io_threads, direct});
           }),
           py::arg("path"), py::arg("buffer_bytes") = uint64_t(8) << 20, py::arg("buffers") = 6,
           py::arg("io_threads") = 2, py::arg("direct") = true)
      .def(
          "write_record",
          [](CheckpointFileWriter& w, const py::list& pieces, uint64_t piece_align, uint64_t block_size) {
            const size_t n = pieces.size();
            std::vector<py::buffer_info> infos(n);
            std::vector<WritePiece> views(n);
            for (size_t k = 0; k < n; ++k) views[k] = piece_of(pieces[k], infos[k]);
            RecordWritten r;
            {
              py::gil_scoped_release nogil;
              r = w.write_record(views.data(), n, piece_align, block_size);
            }
            return py::make_tuple(r.index, r.offset, r.length, to_array(r.piece_offset), to_array(r.piece_crc),
                                  to_array(r.block_crc));
          },
          py::arg("pieces"), py::arg("piece_align") = 64, py::arg("block_size") = 0,
          "Appends one record made of `pieces`; returns (index, offset, length, piece_offsets, piece_crcs, "
          "block_crcs).")
      .def(
          "finish",
          [](CheckpointFileWriter& w, const py::bytes& metadata) {
            std::string meta(metadata);
            py::gil_scoped_release nogil;
            w.finish(meta);
          },
          py::arg("metadata") = py::bytes())
      .def("abort",
           [](CheckpointFileWriter& w) {
             py::gil_scoped_release nogil;
             w.abort();
           })
      .def_property_readonly("is_open", &CheckpointFileWriter::is_open)
      .def_property_readonly("direct", &CheckpointFileWriter::direct)
      .def_property_readonly("records", &CheckpointFileWriter::records)
      .def_property_readonly("size", &CheckpointFileWriter::size)
      .def_property_readonly("path", &CheckpointFileWriter::path);

  py::class_<CheckpointFileReader>(m, "CheckpointFileReader")
      .def(py::init([](const std::string& path, bool direct, uint64_t readahead_bytes, unsigned threads) {
             py::gil_scoped_release nogil;
             return std::make_unique<CheckpointFileReader>(
                 path, CheckpointReaderOptions{direct, readahead_bytes, threads});
           }),
           py::arg("path"), py::arg("direct") = false, py::arg("readahead_bytes") = uint64_t(64) << 20,
           py::arg("threads") = 6,
           "Reads through the page cache, asking the kernel to read `readahead_bytes` ahead; `direct=True` "
           "reads uncached bytes with O_DIRECT instead.")
      .def_property_readonly("records", &CheckpointFileReader::records)
      .def_property_readonly("direct", &CheckpointFileReader::direct,
                             "Whether uncached bytes are read with O_DIRECT (False for a buffered reader, and where the "
                             "filesystem refuses it).")
      .def("record_length",
           [](const CheckpointFileReader& r, uint64_t i) {
             if (i >= r.records()) throw py::index_error("record index out of range");
             return r.record_length(i);
           })
      .def(
          "read_verified",
          [](CheckpointFileReader& r, const U64Array& records, const U64Array& offsets, const U64Array& lengths,
             const U32Array& crcs, const U64Array& addresses) {
            const auto n = records.size();
            if (offsets.size() != n || lengths.size() != n || crcs.size() != n || addresses.size() != n)
              throw py::value_error("read_verified needs equally long arrays");
            std::vector<ReadPart> parts(static_cast<size_t>(n));
            for (py::ssize_t i = 0; i < n; ++i) {
              uint64_t address = addresses.data()[i];
              if (!address && lengths.data()[i]) throw py::value_error("null destination address");
              parts[i] = {records.data()[i], offsets.data()[i], lengths.data()[i], crcs.data()[i],
                          reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(address))};
            }
            py::gil_scoped_release nogil;
            return r.read_verified(parts.data(), parts.size());
          },
          py::arg("records"), py::arg("offsets"), py::arg("lengths"), py::arg("crcs"), py::arg("addresses"),
          "Reads parts of records into caller-owned memory at `addresses` (private: the caller guarantees "
          "each holds `lengths[i]` bytes), verifying each CRC32C; returns the first mismatching part or -1.")
      .def(
          "map_verified",
          [](CheckpointFileReader& r, const U64Array& records, const U64Array& offsets, const U64Array& lengths,
             const U32Array& crcs) {
            const auto n = records.size();
            if (offsets.size() != n || lengths.size() != n || crcs.size() != n)
              throw py::value_error("map_verified needs equally long arrays");
            std::vector<ReadPart> parts(static_cast<size_t>(n));
            for (py::ssize_t i = 0; i < n; ++i)
              parts[i] = {records.data()[i], offsets.data()[i], lengths.data()[i], crcs.data()[i], nullptr};
            MappedParts mapped;
            {
              py::gil_scoped_release nogil;
              mapped = r.map_verified(parts.data(), parts.size());
            }
            return py::make_tuple(mapped.mapping, to_array(mapped.offsets), mapped.bad);
          },
          py::arg("records"), py::arg("offsets"), py::arg("lengths"), py::arg("crcs"),
          "Maps the file private and copy-on-write and verifies each part's CRC32C in place; returns "
          "(mapping, file offset of each part, first mismatching part or -1).");

  py::class_<PrivateFileMapping, std::shared_ptr<PrivateFileMapping>>(
      m, "PrivateMapping", py::buffer_protocol(),
      "A whole file mapped private and writable (a writable buffer); writes stay in this process.")
      .def_buffer([](PrivateFileMapping& map) {
        return py::buffer_info(map.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(map.size())}, {py::ssize_t(1)}, false);
      })
      .def_property_readonly("size", &PrivateFileMapping::size);
  m.def(
      "sync_path",
      [](const std::string& path, bool directory) {
        py::gil_scoped_release nogil;
        sync_path(path, directory);
      },
      py::arg("path"), py::arg("directory") = false, "fsync a file or directory by path.");
  m.def(
      "exchange_paths",
      [](const std::string& a, const std::string& b) {
        py::gil_scoped_release nogil;
        return exchange_paths(a, b);
      },
      py::arg("a"), py::arg("b"), "Atomically swaps two paths; False where the filesystem cannot.");
  m.def(
      "copy_memory",
      [](const py::list& pieces, int helpers) {
        std::vector<CopyPiece> views(pieces.size());
        for (size_t k = 0; k < views.size(); ++k) {
          auto t = pieces[k].cast<py::tuple>();
          if (t.size() != 3) throw py::value_error("a copy piece is a (destination, source, size) triple");
          auto dst = t[0].cast<uintptr_t>(), src = t[1].cast<uintptr_t>();
          auto size = t[2].cast<uint64_t>();
          if ((!dst || !src) && size) throw py::value_error("a copy piece has a null address");
          views[k] = {reinterpret_cast<uint8_t*>(dst), reinterpret_cast<const uint8_t*>(src), size};
        }
        py::gil_scoped_release nogil;
        copy_pieces(views.data(), views.size(), helpers < 0 ? default_copy_helpers() : std::min(static_cast<unsigned>(helpers), 7u));
      },
      py::arg("pieces"), py::arg("helpers") = -1,
      "Copies (destination, source, size) triples of raw addresses (private: the caller guarantees the "
      "memory), splitting large batches across the usable CPUs; `helpers` pool threads besides the caller "
      "(-1: one per further usable CPU).");
  m.def("crc32c_combine", &crc32c_combine, py::arg("crc_a"), py::arg("crc_b"), py::arg("len_b"),
        "CRC32C of A||B from crc32c(A), crc32c(B) and len(B).");
}
