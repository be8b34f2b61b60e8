// A model's libtorch work runs on one thread of a small fixed pool. glibc gives each thread its own malloc arena, and an
// arena keeps the memory it once held: work spread over libuv's pool grew RSS in every arena it touched (bloom-small,
// batch 4x256: 1.7 GB peak vs PEFT's 1.6 GB). On one thread, a step reuses the memory of the last one (1.05 GB); models
// are spread over the pool, so two models still run in parallel, and the threads (and arenas) are reused across loads
// instead of one new arena per model. libuv's worker only waits here.
#pragma once
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace peft_node::binding {

class Executor {
 public:
  Executor() : thread_([this] { loop(); }) {}
  ~Executor() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.get_id() == std::this_thread::get_id()) thread_.detach();
    else thread_.join();
  }
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Runs `fn` on this executor's thread and waits for it; its exception is rethrown here.
  void run(const std::function<void()>& fn) {
    if (std::this_thread::get_id() == thread_.get_id()) return fn();
    struct Job {
      std::mutex mu;
      std::condition_variable cv;
      bool done = false;
      std::exception_ptr error;
    };
    auto job = std::make_shared<Job>();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back([job, &fn] {
        try {
          fn();
        } catch (...) {
          job->error = std::current_exception();
        }
        std::lock_guard<std::mutex> l(job->mu);
        job->done = true;
        job->cv.notify_all();
      });
    }
    cv_.notify_one();
    std::unique_lock<std::mutex> lock(job->mu);
    job->cv.wait(lock, [&] { return job->done; });
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and nothing left
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;  // last member: started after the others exist
};

// The executor for a new model: round-robin over a pool of 4 threads, created on first use and kept for the process's
// life (never joined at exit: they only ever wait for work).
inline std::shared_ptr<Executor> next_executor() {
  static std::mutex mu;
  static std::vector<std::shared_ptr<Executor>>* pool = new std::vector<std::shared_ptr<Executor>>();
  static size_t next = 0;
  constexpr size_t kPoolSize = 4;
  std::lock_guard<std::mutex> lock(mu);
  if (pool->size() < kPoolSize) pool->push_back(std::make_shared<Executor>());
  return (*pool)[next++ % pool->size()];
}

}  // namespace peft_node::binding
