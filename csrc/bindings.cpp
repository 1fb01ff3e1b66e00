// The private module ffrecord._core: a thin layer that converts arguments,
// releases the GIL around every read, write and checksum, and translates
// ffrecord::Error once, here, into the Python exceptions of ffrecord.errors.
//
// Zero-copy results: a batch is one Block; each record comes back as a numpy
// uint8 array viewing that block, and a capsule holding the Block is the base
// of every array, so the memory lives until the last array is released and
// then returns to the buffer pool.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>

#include "buffer_pool.h"
#include "codec.h"
#include "crc.h"
#include "error.h"
#include "format.h"
#include "prefetcher.h"
#include "reader.h"
#include "writer.h"

namespace py = pybind11;
using namespace ffrecord;

namespace {

using IndexArray = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>;

py::capsule owner_of(std::shared_ptr<Block> block) {
  auto* holder = new std::shared_ptr<Block>(std::move(block));
  return py::capsule(holder, [](void* p) { delete static_cast<std::shared_ptr<Block>*>(p); });
}

// One writable 1-D uint8 view per record, all based on one capsule that owns
// the block. Built with numpy's C API directly: this runs once per record,
// and py::array's generic constructor allocates shape and stride vectors and
// a fresh dtype on every call.
class ViewMaker {
 public:
  ViewMaker() {
    descr_ = py::reinterpret_steal<py::object>(api_.PyArray_DescrFromType_(py::detail::npy_api::NPY_UBYTE_));
    if (!descr_) throw py::error_already_set();
  }
  // A new reference to a 1-D view of [data, data + length) whose base is owner.
  PyObject* view(uint8_t* data, uint64_t length, py::handle owner, bool writable = true) const {
    const int flags = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_F_CONTIGUOUS_ |
                      py::detail::npy_api::NPY_ARRAY_ALIGNED_ |
                      (writable ? py::detail::npy_api::NPY_ARRAY_WRITEABLE_ : 0);
    Py_intptr_t shape = static_cast<Py_intptr_t>(length);
    Py_intptr_t stride = 1;
    Py_INCREF(descr_.ptr());  // PyArray_NewFromDescr steals a reference
    PyObject* arr = api_.PyArray_NewFromDescr_(api_.PyArray_Type_, descr_.ptr(), 1, &shape, &stride, data, flags, nullptr);
    if (!arr) throw py::error_already_set();
    Py_INCREF(owner.ptr());  // PyArray_SetBaseObject steals a reference
    if (api_.PyArray_SetBaseObject_(arr, owner.ptr()) != 0) {
      Py_DECREF(arr);
      throw py::error_already_set();
    }
    return arr;
  }

 private:
  py::detail::npy_api& api_ = py::detail::npy_api::get();
  py::object descr_;
};

py::list to_arrays(const Batch& b) {
  py::capsule owner = owner_of(b.block);
  const size_t n = b.offset.size();
  py::list out(n);
  uint8_t* base = b.block->data();
  ViewMaker views;
  for (size_t i = 0; i < n; ++i)
    PyList_SET_ITEM(out.ptr(), static_cast<py::ssize_t>(i), views.view(base + b.offset[i], b.length[i], owner));
  return out;
}

// The records data[offsets[k]:offsets[k + 1]] of a packed 1-D uint8 array as
// views based on it (writable where it is), checked like a slice would be.
py::list record_views(const py::array& data, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& offsets) {
  if (data.ndim() != 1 || data.itemsize() != 1 || data.dtype().kind() != 'u' ||
      !(data.flags() & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_))
    throw py::type_error("record views need a 1-D contiguous uint8 array");
  if (offsets.ndim() != 1 || offsets.size() < 1) throw py::value_error("offsets needs n + 1 entries");
  const int64_t* o = offsets.data();
  const size_t n = static_cast<size_t>(offsets.size()) - 1;
  if (o[0] < 0 || o[n] > data.size())
    throw py::value_error("offsets run from " + std::to_string(o[0]) + " to " + std::to_string(o[n]) +
                          ", outside an array of " + std::to_string(data.size()) + " bytes");
  for (size_t i = 0; i < n; ++i)
    if (o[i + 1] < o[i]) throw py::value_error("offsets must not decrease (entry " + std::to_string(i + 1) + ")");
  const bool writable = data.writeable();
  uint8_t* base = static_cast<uint8_t*>(const_cast<void*>(data.data()));
  py::list out(n);
  ViewMaker views;
  for (size_t i = 0; i < n; ++i)
    PyList_SET_ITEM(out.ptr(), static_cast<py::ssize_t>(i),
                    views.view(base + o[i], static_cast<uint64_t>(o[i + 1] - o[i]), data, writable));
  return out;
}

// Whether `records` (a list or tuple) holds exactly the objects of `views`, in
// order, each still a 1-D uint8 array of unit stride: user code may have
// retyped or reshaped a view in place, or put another object in its place.
bool views_unchanged(const py::handle& records, const py::tuple& views) {
  py::object seq = py::reinterpret_steal<py::object>(PySequence_Fast(records.ptr(), "records must be a sequence"));
  if (!seq) throw py::error_already_set();
  const py::ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  if (n != static_cast<py::ssize_t>(views.size())) return false;
  auto& api = py::detail::npy_api::get();
  py::object u8 = py::reinterpret_steal<py::object>(api.PyArray_DescrFromType_(py::detail::npy_api::NPY_UBYTE_));
  if (!u8) throw py::error_already_set();
  PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
  for (py::ssize_t i = 0; i < n; ++i) {
    PyObject* a = items[i];
    if (a != PyTuple_GET_ITEM(views.ptr(), i) || !api.PyArray_Check_(a)) return false;
    const auto* proxy = py::detail::array_proxy(a);
    if (proxy->descr != u8.ptr() || proxy->nd != 1 || proxy->strides[0] != 1) return false;
  }
  return true;
}

py::array_t<uint32_t> flags_of(const Batch& b) {
  py::array_t<uint32_t> f(static_cast<py::ssize_t>(b.flags.size()));
  if (!b.flags.empty()) std::memcpy(f.mutable_data(), b.flags.data(), b.flags.size() * 4);
  return f;
}

// One contiguous array plus offsets[n+1]; in O_DIRECT mode the records are
// first moved together inside the block (left to right, so memmove is safe).
py::tuple to_packed(Batch& b) {
  const size_t n = b.offset.size();
  uint8_t* base = b.block->data();
  uint64_t pos = 0;
  py::array_t<int64_t> offsets(static_cast<py::ssize_t>(n + 1));
  int64_t* o = offsets.mutable_data();
  for (size_t i = 0; i < n; ++i) {
    if (b.offset[i] != pos) std::memmove(base + pos, base + b.offset[i], b.length[i]);
    o[i] = static_cast<int64_t>(pos);
    pos += b.length[i];
  }
  o[n] = static_cast<int64_t>(pos);
  py::array data(py::dtype::of<uint8_t>(), {static_cast<py::ssize_t>(pos)}, {1}, base, owner_of(b.block));
  return py::make_tuple(data, offsets, flags_of(b));
}

std::vector<uint64_t> to_vector(const IndexArray& idx) {
  return std::vector<uint64_t>(idx.data(), idx.data() + idx.size());
}

void check_range(const Reader& r, const IndexArray& idx) {
  const uint64_t* p = idx.data();
  for (py::ssize_t i = 0; i < idx.size(); ++i)
    if (p[i] >= r.size())
      throw py::index_error("record index " + std::to_string(p[i]) + " out of range for " +
                            std::to_string(r.size()) + " records");
}

// Decodes the compressed records of a batch (arrays as read, with their flags
// and global indices): records without a codec come back as the same array
// objects, the others as views of one block holding them decoded.
py::list decode_batch(const BatchDecoder& d, const py::list& arrays,
                      const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& flags,
                      const IndexArray& idx) {
  const size_t n = arrays.size();
  if (static_cast<size_t>(flags.size()) != n || static_cast<size_t>(idx.size()) != n)
    throw py::value_error("decode needs one flag and one index per record");
  check_range(d.reader(), idx);
  std::vector<EncodedRecord> records(n);
  for (size_t i = 0; i < n; ++i) {
    PyObject* item = PyList_GET_ITEM(arrays.ptr(), static_cast<py::ssize_t>(i));
    if (!py::isinstance<py::array>(item)) throw py::type_error("decode takes numpy uint8 arrays");
    auto a = py::reinterpret_borrow<py::array>(item);
    if (a.itemsize() != 1 || !(a.flags() & py::array::c_style))
      throw py::type_error("decode takes C-contiguous numpy uint8 arrays");
    records[i] = {static_cast<const uint8_t*>(a.data()), static_cast<uint64_t>(a.nbytes()), flags.data()[i],
                  idx.data()[i]};
  }
  DecodedRecords out;
  {
    py::gil_scoped_release nogil;
    out = d.decode(records.data(), n);
  }
  if (!out.block) return arrays;
  py::capsule owner = owner_of(out.block);
  ViewMaker views;
  py::list result(n);
  for (size_t i = 0; i < n; ++i) {
    PyObject* item;
    if ((records[i].flags & format::kCodecMask) == format::kCodecNone) {
      item = PyList_GET_ITEM(arrays.ptr(), static_cast<py::ssize_t>(i));
      Py_INCREF(item);
    } else {
      item = views.view(out.block->data() + out.offset[i], out.length[i], owner);
    }
    PyList_SET_ITEM(result.ptr(), static_cast<py::ssize_t>(i), item);
  }
  return result;
}

py::object error_class(const char* name) { return py::module_::import("ffrecord.errors").attr(name); }

void translate(const Error& e) {
  switch (e.kind()) {
    case ErrorKind::kFormat:
      PyErr_SetString(error_class("FormatError").ptr(), e.what());
      return;
    case ErrorKind::kChecksum:
      PyErr_SetString(error_class("ChecksumError").ptr(), e.what());
      return;
    case ErrorKind::kIo: {
      py::object exc = py::reinterpret_steal<py::object>(
          PyObject_CallFunction(PyExc_OSError, "is", e.error_number(), e.what()));
      if (exc) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
      return;
    }
    case ErrorKind::kIndex:
      PyErr_SetString(PyExc_IndexError, e.what());
      return;
    case ErrorKind::kValue:
      PyErr_SetString(PyExc_ValueError, e.what());
      return;
  }
}

struct BufferView {
  const void* data;
  uint64_t size;
};

BufferView contiguous_bytes(const py::buffer& buf, py::buffer_info& info) {
  info = buf.request();
  if (info.ndim > 1) {
    // Accept any C-contiguous buffer, whatever its shape and item size.
    py::ssize_t expect = info.itemsize;
    for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
      if (info.shape[d] > 1 && info.strides[d] != expect)
        throw py::value_error("record data must be a C-contiguous buffer");
      expect *= info.shape[d];
    }
  } else if (info.ndim == 1 && info.shape[0] > 1 && info.strides[0] != info.itemsize) {
    throw py::value_error("record data must be a C-contiguous buffer");
  }
  return {info.ptr, static_cast<uint64_t>(info.size * info.itemsize)};
}

}  // namespace

void bind_checkpoint(py::module_& m);  // bindings_checkpoint.cpp

PYBIND11_MODULE(_core, m) {
  m.doc() = "ffrecord's compiled core (private; use the ffrecord package)";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      translate(e);
    }
  });

  py::class_<Reader>(m, "Reader")
      .def(py::init([](const std::vector<std::string>& paths, bool check_data, bool direct) {
             py::gil_scoped_release nogil;
             return std::make_unique<Reader>(paths, ReaderOptions{check_data, direct});
           }),
           py::arg("paths"), py::arg("check_data") = true, py::arg("direct") = false)
      .def_property_readonly("size", &Reader::size)
      .def_property_readonly("num_files", &Reader::num_files)
      .def_property_readonly("has_codec", &Reader::has_codec)
      .def_property_readonly("engine", &Reader::engine_name)
      .def_property_readonly("fallback_reason", &Reader::fallback_reason)
      .def_property_readonly("filesystem", &Reader::filesystem)
      .def_property_readonly("engine_reason", &Reader::engine_reason)
      .def_property_readonly("mapping_available", &Reader::mapping_available)
      .def("stats",
           [](const Reader& r) {
             ReadStats st = r.stats();
             py::dict d;
             d["mapped_batches"] = st.mapped_batches;
             d["engine_batches"] = st.engine_batches;
             return d;
           })
      .def("file_info",
           [](const Reader& r, size_t f) {
             if (f >= r.num_files()) throw py::index_error("file index out of range");
             RecordFile& rf = r.file(f);
             py::dict d;
             d["path"] = rf.path();
             // O_DIRECT readers: the alignment their reads use (opens the descriptor).
             if (r.options().direct) {
               rf.direct_fd();
               d["direct_alignment"] = rf.direct_align();
             }
             d["filesystem"] = rf.filesystem().name;
             d["mappable"] = rf.mappable();
             d["version"] = rf.version();
             d["records"] = rf.size();
             d["file_size"] = rf.file_size();
             d["alignment"] = rf.alignment();
             d["has_keys"] = rf.has_keys();
             d["metadata"] = py::bytes(rf.metadata().data(), rf.metadata().size());
             d["dictionary"] = py::bytes(rf.dictionary().data(), rf.dictionary().size());
             return d;
           })
      .def("file_keys",
           [](const Reader& r, size_t f) {
             if (f >= r.num_files()) throw py::index_error("file index out of range");
             const RecordFile& rf = r.file(f);
             rf.require_index_readable("reading its keys");
             py::list out(rf.has_keys() ? rf.size() : 0);
             for (uint64_t i = 0; rf.has_keys() && i < rf.size(); ++i) {
               auto k = rf.key(i);
               PyObject* s = PyUnicode_DecodeUTF8(k.data(), static_cast<py::ssize_t>(k.size()), "surrogateescape");
               if (!s) throw py::error_already_set();
               PyList_SET_ITEM(out.ptr(), static_cast<py::ssize_t>(i), s);
             }
             return out;
           })
      .def("key",
           [](const Reader& r, uint64_t i) {
             if (i >= r.size()) throw py::index_error("record index out of range");
             auto [f, local] = r.locate(i);
             r.file(f).require_index_readable("reading the key of record " + std::to_string(local));
             auto k = r.file(f).key(local);
             PyObject* s = PyUnicode_DecodeUTF8(k.data(), static_cast<py::ssize_t>(k.size()), "surrogateescape");
             if (!s) throw py::error_already_set();
             return py::reinterpret_steal<py::str>(s);
           })
      .def("lengths",
           [](const Reader& r, const IndexArray& idx) {
             check_range(r, idx);
             py::array_t<uint64_t> out(idx.size());
             r.lengths(idx.data(), static_cast<size_t>(idx.size()), out.mutable_data());
             return out;
           })
      .def("read",
           [](const Reader& r, const IndexArray& idx) {
             check_range(r, idx);
             Batch b;
             {
               py::gil_scoped_release nogil;
               b = r.read(idx.data(), static_cast<size_t>(idx.size()));
             }
             return to_arrays(b);
           })
      .def("read_with_flags",
           [](const Reader& r, const IndexArray& idx) {
             check_range(r, idx);
             Batch b;
             {
               py::gil_scoped_release nogil;
               b = r.read(idx.data(), static_cast<size_t>(idx.size()));
             }
             return py::make_tuple(to_arrays(b), flags_of(b));
           })
      .def("read_packed",
           [](const Reader& r, const IndexArray& idx) {
             check_range(r, idx);
             Batch b;
             {
               py::gil_scoped_release nogil;
               b = r.read(idx.data(), static_cast<size_t>(idx.size()));
             }
             return to_packed(b);
           })
      .def("read_into",
           [](const Reader& r, const IndexArray& idx, const py::list& dsts) {
             check_range(r, idx);
             const size_t n = static_cast<size_t>(idx.size());
             if (dsts.size() != n) throw py::value_error("need one destination buffer per index");
             std::vector<py::buffer_info> infos;
             infos.reserve(n);
             std::vector<uint8_t*> ptrs(n);
             std::vector<uint64_t> lengths(n);
             r.lengths(idx.data(), n, lengths.data());
             for (size_t i = 0; i < n; ++i) {
               infos.push_back(py::reinterpret_borrow<py::buffer>(dsts[i]).request(true));
               const auto& info = infos.back();
               uint64_t need = lengths[i];
               if (static_cast<uint64_t>(info.size * info.itemsize) < need)
                 throw py::value_error("destination " + std::to_string(i) + " holds " +
                                       std::to_string(info.size * info.itemsize) + " bytes; the record has " +
                                       std::to_string(need));
               ptrs[i] = static_cast<uint8_t*>(info.ptr);
             }
             py::gil_scoped_release nogil;
             r.read_into(idx.data(), n, ptrs.data());
           })
      .def("read_bytes",
           [](const Reader& r, const IndexArray& idx) {
             // Each record is read straight into a new bytes object, filled
             // before any Python code can see it (one copy, like read_into).
             check_range(r, idx);
             const size_t n = static_cast<size_t>(idx.size());
             py::list out(static_cast<py::ssize_t>(n));
             std::vector<uint8_t*> ptrs(n);
             std::vector<uint64_t> lengths(n);
             r.lengths(idx.data(), n, lengths.data());
             for (size_t i = 0; i < n; ++i) {
               const uint64_t len = lengths[i];
               PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<py::ssize_t>(len));
               if (!b) throw py::error_already_set();
               PyList_SET_ITEM(out.ptr(), static_cast<py::ssize_t>(i), b);
               ptrs[i] = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(b));
             }
             {
               py::gil_scoped_release nogil;
               r.read_into(idx.data(), n, ptrs.data());
             }
             return out;
           })
      .def("read_packed_into",
           [](const Reader& r, const IndexArray& idx, const py::buffer& out) {
             check_range(r, idx);
             const size_t n = static_cast<size_t>(idx.size());
             py::array_t<int64_t> offsets(static_cast<py::ssize_t>(n + 1));
             int64_t* o = offsets.mutable_data();
             std::vector<uint64_t> lengths(n);
             r.lengths(idx.data(), n, lengths.data());
             o[0] = 0;
             for (size_t i = 0; i < n; ++i) o[i + 1] = o[i] + static_cast<int64_t>(lengths[i]);
             py::buffer_info info = out.request(true);
             const int64_t room = static_cast<int64_t>(info.size * info.itemsize);
             if (room < o[n])
               throw py::value_error("the output buffer holds " + std::to_string(room) + " bytes; the records need " +
                                     std::to_string(o[n]));
             std::vector<uint8_t*> ptrs(n);
             for (size_t i = 0; i < n; ++i) ptrs[i] = static_cast<uint8_t*>(info.ptr) + o[i];
             {
               py::gil_scoped_release nogil;
               r.read_into(idx.data(), n, ptrs.data());
             }
             return offsets;
           });

  m.def("views_unchanged", &views_unchanged, py::arg("records"), py::arg("views"),
        "Whether records holds exactly these views, in order, each still 1-D uint8 with unit stride.");
  m.def("record_views", &record_views, py::arg("data"), py::arg("offsets"),
        "Records data[offsets[k]:offsets[k + 1]] of a 1-D uint8 array as numpy views based on it.");

  py::class_<BatchDecoder>(m, "Decoder")
      .def(py::init([](const Reader& r, unsigned threads) {
             return std::make_unique<BatchDecoder>(r, threads ? threads : default_decode_threads());
           }),
           py::arg("reader"), py::arg("threads") = 0, py::keep_alive<1, 2>())
      .def_property_readonly("threads", &BatchDecoder::threads)
      .def("decode",
           [](const BatchDecoder& d, const py::list& arrays,
              const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& flags,
              const IndexArray& idx) { return decode_batch(d, arrays, flags, idx); },
           py::arg("arrays"), py::arg("flags"), py::arg("indices"));

  py::class_<Prefetcher>(m, "Prefetcher")
      .def(py::init([](const Reader& r, unsigned workers) { return std::make_unique<Prefetcher>(r, workers); }),
           py::arg("reader"), py::arg("workers") = 1, py::keep_alive<1, 2>())
      .def("submit",
           [](Prefetcher& p, const IndexArray& idx) {
             check_range(p.reader(), idx);
             return p.submit(to_vector(idx));
           })
      .def("take",
           [](Prefetcher& p, uint64_t ticket, bool with_flags) -> py::object {
             Batch b;
             {
               py::gil_scoped_release nogil;
               b = p.take(ticket);
             }
             if (with_flags) return py::make_tuple(to_arrays(b), flags_of(b));
             return to_arrays(b);
           },
           py::arg("ticket"), py::arg("with_flags") = false)
      .def_property_readonly("pending", &Prefetcher::pending);

  py::class_<Writer>(m, "Writer")
      .def(py::init([](const std::string& path, int64_t expected, uint32_t alignment) {
             py::gil_scoped_release nogil;
             return std::make_unique<Writer>(path, WriterOptions{expected, alignment});
           }),
           py::arg("path"), py::arg("expected") = -1, py::arg("alignment") = 1)
      .def("write",
           [](Writer& w, const py::buffer& data, uint32_t flags, const py::object& key) {
             py::buffer_info info;
             BufferView v = contiguous_bytes(data, info);
             std::string key_storage;
             std::string_view key_view;
             bool has_key = !key.is_none();
             if (has_key) {
               key_storage = key.cast<std::string>();
               key_view = key_storage;
             }
             py::gil_scoped_release nogil;
             w.write(v.data, v.size, flags, has_key ? &key_view : nullptr);
           },
           py::arg("data"), py::arg("flags") = 0, py::arg("key") = py::none())
      // Many records from one buffer: record i is data[offsets[i]:offsets[i+1]]
      // (offsets as Arrow keeps them), written in one call without the GIL.
      .def("write_packed",
           [](Writer& w, const py::buffer& data, const IndexArray& offsets, uint32_t flags,
              const py::object& keys) {
             py::buffer_info info;
             BufferView v = contiguous_bytes(data, info);
             const ssize_t n = offsets.size() ? offsets.size() - 1 : 0;
             const uint64_t* off = offsets.data();
             for (ssize_t i = 0; i < n; ++i)
               if (off[i] > off[i + 1] || off[i + 1] > v.size)
                 throw py::value_error("offsets must not decrease and must stay within the data (record " +
                                       std::to_string(i) + ")");
             std::vector<std::string> key_storage;
             if (!keys.is_none()) {
               key_storage = keys.cast<std::vector<std::string>>();
               if (static_cast<ssize_t>(key_storage.size()) != n)
                 throw py::value_error("got " + std::to_string(n) + " records but " +
                                       std::to_string(key_storage.size()) + " keys");
             }
             std::vector<std::string_view> key_views(key_storage.begin(), key_storage.end());
             py::gil_scoped_release nogil;
             w.write_packed(static_cast<const uint8_t*>(v.data), off, static_cast<size_t>(n), flags,
                            keys.is_none() ? nullptr : key_views.data());
           },
           py::arg("data"), py::arg("offsets"), py::arg("flags") = 0, py::arg("keys") = py::none())
      .def("set_metadata", [](Writer& w, const py::bytes& b) { w.set_metadata(std::string(b)); })
      .def("set_dictionary", [](Writer& w, const py::bytes& b) { w.set_dictionary(std::string(b)); })
      .def("close",
           [](Writer& w) {
             py::gil_scoped_release nogil;
             w.close();
           })
      .def("abort", &Writer::abort)
      .def_property_readonly("count", &Writer::count)
      .def_property_readonly("is_open", &Writer::is_open)
      .def_property_readonly("temp_path", &Writer::temp_path);

  m.def(
      "crc32c",
      [](const py::buffer& data, uint32_t value) {
        py::buffer_info info;
        BufferView v = contiguous_bytes(data, info);
        py::gil_scoped_release nogil;
        return crc32c(v.data, v.size, value);
      },
      py::arg("data"), py::arg("value") = 0, "CRC32C (Castagnoli) of a buffer, extending `value`.");
  m.def(
      "crc32",
      [](const py::buffer& data, uint32_t value) {
        py::buffer_info info;
        BufferView v = contiguous_bytes(data, info);
        py::gil_scoped_release nogil;
        return crc32_ieee(v.data, v.size, value);
      },
      py::arg("data"), py::arg("value") = 0, "zlib CRC32 (IEEE) of a buffer, extending `value`.");
  m.def("crc32c_impl", &crc32c_impl);
  m.def("pooled_bytes", &pooled_bytes);
  bind_checkpoint(m);
}
