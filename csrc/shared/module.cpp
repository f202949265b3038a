// The Python module fastops._C. `import fastops._C` loads this library, whose static
// initialisers register every op: each op's schema, rules and Meta kernel in
// csrc/<op>/<op>.cpp, its CPU kernel in cpu.cpp, autograd in autograd.cpp and autocast in
// autocast.cpp (the Triton CUDA kernels are registered from Python). The module itself is empty.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
