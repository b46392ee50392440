// How the CPU drivers run work on several threads, without owning threads.
//
// A driver splits its work into `num_tasks` independent tasks and hands them
// to a ParallelFor, which calls fn(begin, end) on disjoint task ranges that
// together cover [0, num_tasks). The TensorFlow op adapts TF's intra-op thread
// pool to this; the pybind11 module uses the ThreadPool below. The drivers
// stay free of both.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fusedopt {

using TaskRange = std::function<void(int64_t begin, int64_t end)>;
// cost_per_task: roughly the bytes one task touches, for pools that size
// their shards by cost.
using ParallelFor =
    std::function<void(int64_t num_tasks, int64_t cost_per_task, const TaskRange& fn)>;

// Runs every task on the calling thread.
void serial_for(int64_t num_tasks, int64_t cost_per_task, const TaskRange& fn);

// A small persistent pool: the caller works too, and parallel_for returns when
// every task has finished. One parallel_for at a time (callers serialize).
class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }
  void parallel_for(int64_t num_tasks, int64_t cost_per_task, const TaskRange& fn);

 private:
  void worker_loop(int index);

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  const TaskRange* job_ = nullptr;
  int64_t job_tasks_ = 0;
  int64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

// The process-wide pool of the pybind11 module, sized to the machine
// (FUSEDOPT_NUM_THREADS overrides), created on first use.
ThreadPool& default_thread_pool();

}  // namespace fusedopt
