// How the CPU drivers run work on several threads, without owning threads.
//
// A driver splits its work into `num_tasks` independent tasks and hands them
// to a ParallelFor, which calls fn(begin, end) on disjoint task ranges that
// together cover [0, num_tasks). The TensorFlow op adapts TF's intra-op thread
// pool to this; the pybind11 module uses the ThreadPool below. The drivers
// stay free of both.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fusedopt {

using TaskRange = std::function<void(int64_t begin, int64_t end)>;
// cost_per_task: roughly the bytes one task touches; the pools wake as many
// threads as the total is worth (useful_threads).
using ParallelFor =
    std::function<void(int64_t num_tasks, int64_t cost_per_task, const TaskRange& fn)>;

// Bytes of memory traffic that make another thread worth waking. Waking a
// sleeping thread and waiting for it costs some 5-50 us (more on a loaded
// machine); 2 MiB is about 30 us of Adam's arithmetic on one core (28 bytes
// per element), the per-thread work Eigen's cost model asks for (100K
// cycles). Below it a call runs on the calling thread and wakes no pool.
constexpr int64_t kBytesPerThread = int64_t(2) << 20;

// How many threads (the caller included) `bytes` of traffic is worth, at most
// `available`: one per kBytesPerThread, at least one.
inline int64_t useful_threads(int64_t bytes, int64_t available) {
  return std::max<int64_t>(1, std::min<int64_t>(available, bytes / kBytesPerThread));
}

// Runs every task on the calling thread.
void serial_for(int64_t num_tasks, int64_t cost_per_task, const TaskRange& fn);

// A small persistent pool: the caller works too, and parallel_for returns when
// every task has finished. One parallel_for at a time (callers serialize).
// It wakes only the workers the work is worth (useful_threads).
class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }
  void parallel_for(int64_t num_tasks, int64_t cost_per_task, const TaskRange& fn);

 private:
  void worker_loop();

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one parallel_for at a time
  std::mutex mutex_;      // guards everything below
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  const TaskRange* job_ = nullptr;
  int64_t job_tasks_ = 0;
  int job_shares_ = 0;  // the job's contiguous shares; the caller runs share 0
  int next_share_ = 0;  // the next share a worker takes, < job_shares_ while one is left
  int pending_ = 0;     // workers' shares not finished yet
  bool stop_ = false;
};

// The process-wide pool of the pybind11 module, sized to the machine
// (FUSEDOPT_NUM_THREADS overrides), created on first use. Fork-safe: a child
// process gets a new pool on its first use (the parent's threads do not exist
// there, and its pool may have been locked by another thread at the fork).
ThreadPool& default_thread_pool();

}  // namespace fusedopt
