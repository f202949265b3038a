// The Python module fastops._C. `import fastops._C` loads this library, whose static
// initialisers register every op: each op's schema, rules and Meta kernel in
// csrc/<op>/<op>.cpp, its CPU kernel in cpu.cpp, autograd in autograd.cpp and autocast in
// autocast.cpp (the Triton CUDA kernels are registered from Python).
//
// The module has one job besides: the eager fast path of fastops.functional. Calling an op
// through torch.ops costs about 5 us on this project's CPU machine before the op runs (the
// arguments are parsed against the schema in Python-facing C++, then the call is boxed), more
// than a tiny op itself. fastops.functional has already normalised every argument to the
// schema's types, so `call(handle, *args)` converts them one by one by their Python type and
// calls the operator's boxed kernel through the dispatcher: the same kernels, dispatch keys
// (autograd, autocast, Python modes), checks and error messages as torch.ops, at a fraction
// of the cost. Under torch.compile, or with a __torch_function__ override among the arguments,
// fastops.functional calls torch.ops instead (see fastops/_dispatch.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <deque>
#include <string>

namespace fastops {
namespace {

// Every handle `op_handle` gave out; a deque keeps their addresses stable.
std::deque<c10::OperatorHandle>& handles() {
  static std::deque<c10::OperatorHandle> all;
  return all;
}

// _C.op_handle("fastops::linear") -> an int for call().
PyObject* op_handle(PyObject* /*module*/, PyObject* name) {
  HANDLE_TH_ERRORS
  TORCH_CHECK_TYPE(PyUnicode_Check(name), "op_handle: expected an operator name (str)");
  const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow(PyUnicode_AsUTF8(name), "");
  auto& all = handles();
  size_t index = 0;
  while (index < all.size() && !(all[index] == op)) ++index;  // one handle per operator
  if (index == all.size()) all.push_back(op);
  return PyLong_FromSsize_t(static_cast<Py_ssize_t>(index));
  END_HANDLE_TH_ERRORS
}

// One argument, by its Python type: what fastops.functional passes (tensors, None, str, float,
// bool, int, tuples / lists of ints or bools, dtypes). Exact tensors (and Parameters) first, then
// the plain Python types, and only then THPVariable_Check for tensor subclasses: on any other
// object it is a full isinstance through the tensor metaclass (~800 instructions), which the
// ints, tuples and bools of a tiny op's call would each pay.
c10::IValue to_ivalue(PyObject* value) {
  if (THPVariable_CheckExact(value)) return THPVariable_Unpack(value);
  if (value == Py_None) return c10::IValue();
  if (PyBool_Check(value)) return value == Py_True;
  if (PyLong_Check(value)) {
    const int64_t integer = PyLong_AsLongLong(value);
    if (integer == -1 && PyErr_Occurred()) throw python_error();
    return integer;
  }
  if (PyFloat_Check(value)) return PyFloat_AS_DOUBLE(value);
  if (PyUnicode_Check(value)) {
    Py_ssize_t size = 0;
    const char* text = PyUnicode_AsUTF8AndSize(value, &size);
    if (text == nullptr) throw python_error();
    return std::string(text, size);
  }
  if (THPDtype_Check(value)) {
    return static_cast<int64_t>(reinterpret_cast<THPDtype*>(value)->scalar_type);
  }
  if (PyTuple_Check(value) || PyList_Check(value)) {
    const Py_ssize_t size = PySequence_Fast_GET_SIZE(value);
    PyObject** items = PySequence_Fast_ITEMS(value);
    if (size > 0 && PyBool_Check(items[0])) {
      c10::List<bool> list;
      for (Py_ssize_t i = 0; i < size; ++i) list.push_back(items[i] == Py_True);
      return list;
    }
    std::vector<int64_t> list(size);
    for (Py_ssize_t i = 0; i < size; ++i) {
      TORCH_CHECK_TYPE(PyLong_Check(items[i]), "fastops._C.call: expected a list of ints, got ",
                       Py_TYPE(items[i])->tp_name);
      list[i] = PyLong_AsLongLong(items[i]);
    }
    return list;
  }
  if (THPVariable_Check(value)) return THPVariable_Unpack(value);  // a tensor subclass
  TORCH_CHECK_TYPE(false, "fastops._C.call: unsupported argument type ", Py_TYPE(value)->tp_name);
}

PyObject* to_python(c10::IValue&& value) {
  if (value.isTensor()) return THPVariable_Wrap(std::move(value).toTensor());
  TORCH_INTERNAL_ASSERT(value.isNone(), "fastops._C.call: unexpected result ", value.tagKind());
  Py_RETURN_NONE;
}

// _C.call(handle, *args): the operator's result (a tensor, a tuple of tensors, or None).
PyObject* call(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs >= 1 && PyLong_Check(args[0]), "fastops._C.call: expected a handle first");
  const auto index = PyLong_AsSize_t(args[0]);
  TORCH_CHECK(index < handles().size(), "fastops._C.call: unknown handle ", index);
  const c10::OperatorHandle& op = handles()[index];
  const auto& arguments = op.schema().arguments();
  const size_t given = static_cast<size_t>(nargs - 1);
  TORCH_CHECK_TYPE(given <= arguments.size(), op.schema().name(), ": expected at most ",
                   arguments.size(), " arguments, got ", given);
  torch::jit::Stack stack;
  stack.reserve(arguments.size());
  for (Py_ssize_t i = 1; i < nargs; ++i) stack.push_back(to_ivalue(args[i]));
  for (size_t i = given; i < arguments.size(); ++i) {  // trailing arguments with defaults
    TORCH_CHECK_TYPE(arguments[i].default_value().has_value(), op.schema().name(),
                     ": missing argument '", arguments[i].name(), "'");
    stack.push_back(*arguments[i].default_value());
  }
  {
    pybind11::gil_scoped_release no_gil;
    op.callBoxed(stack);
  }
  if (stack.size() == 1) return to_python(std::move(stack[0]));
  PyObject* results = PyTuple_New(static_cast<Py_ssize_t>(stack.size()));
  if (results == nullptr) throw python_error();
  for (size_t i = 0; i < stack.size(); ++i) {
    PyTuple_SET_ITEM(results, static_cast<Py_ssize_t>(i), to_python(std::move(stack[i])));
  }
  return results;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"op_handle", op_handle, METH_O, "op_handle(name) -> int: a handle of a fastops operator"},
    {"call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(call)), METH_FASTCALL,
     "call(handle, *args): the operator's boxed kernel, arguments converted by type"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace
}  // namespace fastops

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, fastops::methods};
  return PyModule_Create(&module);
}
