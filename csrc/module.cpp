// Makes the library an importable Python module (spnas_ops._C) so that `import` finds it
// wherever the package is installed; importing it runs the TORCH_LIBRARY registrations.
#include <Python.h>

static struct PyModuleDef spnas_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&spnas_module);
}
