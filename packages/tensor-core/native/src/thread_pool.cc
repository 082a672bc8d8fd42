// The thread pool: threads are created once, on first use, and wait for work between calls.
//
// Why not OpenMP: one pool must serve this addon and every extension addon in the process, and callers need
// a plain C entry point (SdkTable) to reach it. Why spin before sleeping: decode issues thousands of small
// parallel regions per second; waking a sleeping thread through the kernel costs tens of microseconds,
// so workers spin briefly on the generation counter before falling back to a condition variable.
#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TL_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define TL_PAUSE() asm volatile("yield")
#else
#define TL_PAUSE() ((void)0)
#endif

namespace tl {
namespace {

int default_threads() {
  if (const char* env = std::getenv("TINY_LLM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : size_(threads) {
    for (int i = 1; i < size_; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int size() const { return size_; }

  void run(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, size_);
    if (chunks <= 1 || size_ == 1 || in_parallel_region_) {
      fn(ctx, 0, n);  // too small to split, or nested inside another parallel region
      return;
    }
    std::lock_guard<std::mutex> one_job_at_a_time(job_mutex_);
    job_ = Job{fn, ctx, n, chunks};
    next_chunk_.store(0, std::memory_order_relaxed);
    pending_.store(static_cast<int>(chunks), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    work_on_job();
    while (pending_.load(std::memory_order_acquire) != 0) TL_PAUSE();
  }

 private:
  struct Job {
    RangeFn fn = nullptr;
    void* ctx = nullptr;
    int64_t n = 0;
    int64_t chunks = 0;
  };

  // Chunks are handed out dynamically so a thread that the OS delays does not hold up the others.
  void work_on_job() {
    in_parallel_region_ = true;
    for (;;) {
      int64_t c = next_chunk_.fetch_add(1, std::memory_order_relaxed);
      if (c >= job_.chunks) break;
      int64_t begin = job_.n * c / job_.chunks;
      int64_t end = job_.n * (c + 1) / job_.chunks;
      job_.fn(job_.ctx, begin, end);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
    in_parallel_region_ = false;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      uint64_t gen = generation_.load(std::memory_order_acquire);
      for (int spin = 0; gen == seen && spin < 20000; ++spin) {
        TL_PAUSE();
        gen = generation_.load(std::memory_order_acquire);
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
        gen = generation_.load();
      }
      seen = gen;
      if (stopping_) return;
      work_on_job();
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::mutex mutex_, job_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_chunk_{0};
  std::atomic<int> pending_{0};
  Job job_;
  bool stopping_ = false;
  static thread_local bool in_parallel_region_;
};

thread_local bool ThreadPool::in_parallel_region_ = false;

ThreadPool& pool() {
  static ThreadPool instance(default_threads());
  return instance;
}

}  // namespace

void core_parallel_for(int64_t n, int64_t grain, RangeFn fn, void* ctx) { pool().run(n, grain, fn, ctx); }
int32_t core_num_threads() { return pool().size(); }

}  // namespace tl
