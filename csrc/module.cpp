// The importable shell of the native library: `import soap_cuda._C` loads the shared object,
// whose static initialisers register the schemas and kernels with the dispatcher. It also
// exposes the CUDA sync's block partition (plain C++), so the tests can check it without a GPU,
// and the count of autocast copies of B held by csrc/autocast/cast.cpp (and a way to drop them).
#include <Python.h>

#include <cstdint>
#include <vector>

#include "autocast/cast.h"
#include "feedback_sync/sync_partition.h"

namespace {

// _sync_block_partition(numels: list[int], elems_per_block: int, budget: int) -> list[int]
PyObject* sync_block_partition(PyObject*, PyObject* args) {
  PyObject* numels_obj = nullptr;
  long long elems_per_block = 0, budget = 0;
  if (!PyArg_ParseTuple(args, "OLL", &numels_obj, &elems_per_block, &budget)) return nullptr;
  if (elems_per_block <= 0 || budget <= 0) {
    PyErr_SetString(PyExc_ValueError, "elems_per_block and budget must be positive");
    return nullptr;
  }
  PyObject* seq = PySequence_Fast(numels_obj, "numels must be a sequence of ints");
  if (seq == nullptr) return nullptr;
  std::vector<int64_t> numels;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
    const long long n = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
    if (n == -1 && PyErr_Occurred()) {
      Py_DECREF(seq);
      return nullptr;
    }
    if (n < 0) {
      Py_DECREF(seq);
      PyErr_SetString(PyExc_ValueError, "numels must be >= 0");
      return nullptr;
    }
    numels.push_back(n);
  }
  Py_DECREF(seq);
  const std::vector<int64_t> first =
      soap_cuda::partition_sync_blocks(numels, elems_per_block, budget);
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(first.size()));
  if (out == nullptr) return nullptr;
  for (size_t i = 0; i < first.size(); ++i) {
    PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i), PyLong_FromLongLong(first[i]));
  }
  return out;
}

PyObject* feedback_cast_count(PyObject*, PyObject*) {
  return PyLong_FromSize_t(soap_cuda::feedback_cast_count());
}

PyObject* clear_feedback_casts(PyObject*, PyObject*) {
  soap_cuda::clear_feedback_casts();
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"_sync_block_partition", sync_block_partition, METH_VARARGS,
     "First block of each layer (and the total) in the CUDA feedback sync's launch."},
    {"_feedback_cast_count", feedback_cast_count, METH_NOARGS,
     "How many autocast copies of feedback matrices are cached (B's that are still alive)."},
    {"_clear_feedback_casts", clear_feedback_casts, METH_NOARGS,
     "Drop every cached autocast copy of a feedback matrix."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef SOAP_CUDA_WITH_CUDA
  PyModule_AddIntConstant(module, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(module, "WITH_CUDA", 0);
#endif
  return module;
}
}
