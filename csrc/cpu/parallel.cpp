#include "cpu/parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>

namespace fusedopt {

void serial_for(int64_t num_tasks, int64_t /*cost_per_task*/, const TaskRange& fn) {
  if (num_tasks > 0) fn(0, num_tasks);
}

namespace {
// Contiguous share `index` of `parts` over [0, n).
void share(int64_t n, int parts, int index, int64_t* begin, int64_t* end) {
  *begin = n * index / parts;
  *end = n * (index + 1) / parts;
}
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < std::max(1, num_threads); ++i) {
    workers_.emplace_back([this] { worker_loop(); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::worker_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    start_cv_.wait(lock, [&] { return stop_ || next_share_ < job_shares_; });
    if (stop_) return;
    const int index = next_share_++;
    const TaskRange* job = job_;
    const int64_t tasks = job_tasks_;
    const int shares = job_shares_;
    lock.unlock();
    int64_t begin, end;
    share(tasks, shares, index, &begin, &end);
    if (begin < end) (*job)(begin, end);
    lock.lock();
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

void ThreadPool::parallel_for(int64_t num_tasks, int64_t cost_per_task, const TaskRange& fn) {
  if (num_tasks <= 0) return;
  const int shares = static_cast<int>(
      std::min(num_tasks, useful_threads(num_tasks * cost_per_task, num_threads())));
  if (shares == 1) {
    fn(0, num_tasks);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_tasks_ = num_tasks;
    job_shares_ = shares;
    next_share_ = 1;
    pending_ = shares - 1;
  }
  // Wake only as many workers as there are shares; one that is awake already
  // (between two jobs) takes a share before it waits again.
  if (shares == num_threads()) {
    start_cv_.notify_all();
  } else {
    for (int i = 1; i < shares; ++i) start_cv_.notify_one();
  }
  int64_t begin, end;
  share(num_tasks, shares, 0, &begin, &end);
  if (begin < end) fn(begin, end);
  std::unique_lock<std::mutex> lock(mutex_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
  job_shares_ = 0;
  next_share_ = 0;
}

namespace {
std::atomic<ThreadPool*> g_pool{nullptr};

// pthread_atfork's child handler. The parent's pool is left behind, never
// destroyed: its threads do not exist in the child (joining them would hang,
// destroying a joinable std::thread aborts), and its mutexes may be held by a
// parent thread that was inside parallel_for at the fork.
void forget_pool_in_child() { g_pool.store(nullptr, std::memory_order_relaxed); }

int pool_size() {
  if (const char* env = std::getenv("FUSEDOPT_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}
}  // namespace

ThreadPool& default_thread_pool() {
  ThreadPool* pool = g_pool.load(std::memory_order_acquire);
  if (pool != nullptr) return *pool;
  static const bool registered = pthread_atfork(nullptr, nullptr, forget_pool_in_child) == 0;
  (void)registered;
  // Never destroyed (forget_pool_in_child; at exit the idle workers just end
  // with the process). Two threads may race to create it: one pool wins.
  auto* fresh = new ThreadPool(pool_size());
  if (g_pool.compare_exchange_strong(pool, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;  // idle and of this process: joins its threads
  return *pool;
}

}  // namespace fusedopt
