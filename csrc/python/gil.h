// Releasing the GIL around a kernel call in a way that survives interpreter
// shutdown.
#pragma once

#include <pybind11/pybind11.h>

#include <type_traits>

namespace fusedopt {

// Runs fn() with the GIL released and returns what it returns. fn must touch
// no Python object (the kernels and their pools do not).
//
// Why not py::gil_scoped_release: it takes the GIL back in its destructor.
// Before Python 3.14, a thread that takes the GIL back while the interpreter
// finalizes (a daemon thread still inside a kernel when the main thread
// exits) is ended by pthread_exit, which unwinds the thread's stack; the
// unwind cannot leave a destructor (destructors are noexcept), so it calls
// std::terminate and aborts the whole process at exit ("terminate called
// without an active exception"). Here the GIL is taken back in plain code:
// the unwind passes through it and through pybind11 (which rethrows
// abi::__forced_unwind), and ends only that thread, as it would a thread
// running Python code. tests/test_shutdown.py runs that case.
//
// The GIL is taken back outside the try: an unwind out of
// PyEval_RestoreThread must not be caught and taken back a second time.
template <typename Fn>
auto without_gil(Fn&& fn) -> std::invoke_result_t<Fn&> {
  PyThreadState* state = PyEval_SaveThread();
  auto run = [&]() -> std::invoke_result_t<Fn&> {
    try {
      return fn();
    } catch (...) {
      PyEval_RestoreThread(state);
      throw;
    }
  };
  if constexpr (std::is_void_v<std::invoke_result_t<Fn&>>) {
    run();
    PyEval_RestoreThread(state);
  } else {
    auto result = run();
    PyEval_RestoreThread(state);
    return result;
  }
}

}  // namespace fusedopt
