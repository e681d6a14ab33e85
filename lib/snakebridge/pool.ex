defmodule SnakeBridge.Pool do
  @moduledoc """
  A pool of Python worker processes, run as a child of a supervisor.

  The process owns the native pool: the Rust runtime spawns, watches and
  restarts the Python processes, and calls go straight from the caller to the
  runtime by pool name, never through this process. For each worker it starts
  a linked process that reads the worker's replies through a VM port and
  delivers them to their callers. It forwards the workers' output to `Logger`
  (see "Logging" below) and stops the workers when it stops.

      children = [
        {SnakeBridge.Pool,
         name: :ml,
         size: 4,
         python: ".venv/bin/python",
         python_path: ["priv/py"],
         env: [{"OMP_NUM_THREADS", "1"}]}
      ]

      Supervisor.start_link(children, strategy: :one_for_one)
      SnakeBridge.call("my_model", "predict", [[1.0, 2.0]], pool: :ml)

  A pool whose interpreter cannot be started still starts; its calls return
  `{:error, %SnakeBridge.Error{reason: :python_unavailable}}` saying what was tried.

  ## Options

    * `:name` — the pool's name, used as the `:pool` option of calls.
      Default `:default`.
    * `:size` — the number of Python processes. Default `System.schedulers_online()`.
    * `:python` — the interpreter: a path (relative paths are expanded against
      the current directory) or a command looked up in `PATH`. Default: the
      `SNAKEBRIDGE_PYTHON` environment variable, else `"python3"`.
    * `:python_path` — directories prepended to `sys.path`, expanded to
      absolute paths. Default `[]`.
    * `:env` — extra environment variables for the workers, as
      `[{"NAME", "value"}]`. Default `[]`.
    * `:max_queue` — calls that may wait for a worker before new calls are
      answered with `:overloaded` (a call a writer thread takes from the
      queue at that moment may add one per worker). Default `10_000`.
    * `:max_calls` — recycle a worker after this many calls. Default `nil` (never).
    * `:max_memory_mb` — recycle a worker whose resident memory exceeds this.
      Default `nil` (never). Checked every second.
    * `:health_check_interval` — ping a worker that has been idle this many
      milliseconds. Default `5_000`.
    * `:health_check_timeout` — replace a worker that leaves a ping
      unanswered this many milliseconds. Default `5_000`.
    * `:cancel_grace` — milliseconds a cancelled or timed-out call may keep
      running (stuck in C code that ignores the interruption) before its
      worker is killed and replaced. Default `2_000`.
    * `:log_queue` — lines of Python output (from all workers of the pool)
      that may wait to be logged; past it, lines are dropped. Default `1_000`.
    * `:log_rate` — lines of Python output logged per second at most, after
      a burst of `:log_queue` lines; past it, lines are dropped. Default `1_000`.
    * `:output` — where what a call prints to `sys.stdout` and `sys.stderr`
      goes: `:log` (the default) logs it (see "Logging" below); `:caller`
      writes it to the calling process's group leader before the call
      returns (see `SnakeBridge.call/4`'s `:output`, which overrides this
      per call). Output written outside any call is logged either way.
    * `:circuit_breaker` — `false` (the default), `true`, or
      `[failures: 10, window: 10_000, cooldown: 5_000]` (any omitted key
      takes that default). With it, `failures` counted within `window`
      milliseconds open the pool's circuit: calls then fail at once with
      `:circuit_open` for `cooldown` milliseconds, after which one trial call
      goes through, and its answer closes the circuit. Counted: a worker that
      dies with calls (once per worker), a call that times out on a worker,
      a worker that fails to start. Python exceptions never count.
      `SnakeBridge.stats/1` shows the state under `:circuit`.
    * `:cluster` — `false` (the default), `true`, or
      `[strategy: :local_first, overload: 2 * size, gossip_interval: 100]`
      (any omitted key takes that default): the pool joins the cluster-wide
      group of its name, and every connected node can call it by name. See
      `SnakeBridge.Cluster`.
    * `:init` — what each worker runs before it is marked ready:
      `[imports: ["numpy", "my_model"], code: "import torch\ntorch.set_num_threads(1)", timeout: 30_000]`.
      `:imports` (default `[]`) are imported in order, then `:code` (default
      `nil`) runs in a fresh namespace; `:timeout` (default `30_000`) is how
      many milliseconds a worker may take to start, init included. Restarted
      and recycled workers run it too. Calls wait for a ready worker within
      their own `:timeout`. The init reaches the worker on its command line,
      where `ps` shows it: keep secrets in `:env`. An init that raises is a
      failed start: the warning logged, and the `:python_unavailable` error
      calls get once the worker slot gives up (3 failed starts in a row),
      carry its traceback. Default `[]` (no init).
    * `:python_env` — build a virtualenv from `:python` with these packages
      and run the workers in it; see `SnakeBridge.PythonEnv` for the options
      (`:requirements`, `:pyproject`, `:find_links`, `:offline`, ...). The
      pool starts once the environment is ready (built, or found in the
      cache); when it cannot be built, the pool starts anyway and its calls
      return `:python_unavailable` with the installer's last lines.
      Default `nil`.
    * `:shared_memory` — whether large calls and results (32 KiB and more,
      encoded) go through shared memory instead of the socket (see
      "Large payloads" in the README). Default `true`.
    * `:max_payload` — the largest encoded call or result, in bytes, from
      `1_048_576` to `4_294_967_295`; larger ones fail with
      `:payload_too_large`. Default 256 MiB (`268_435_456`), or 64 MiB
      (`67_108_864`, the socket's frame limit and the most it may be) with
      `shared_memory: false`. Each worker's shared memory is sized for two
      payloads of this size in each direction (reserved address space;
      memory is used only as payloads need it).

  A recycled worker gets no new calls, answers the ones it has, exits, and
  is replaced.

  ## Logging

  Lines that Python writes to `sys.stdout` are logged at `:info`, lines
  written to `sys.stderr` at `:warning`, and `logging` records at their own
  level (`DEBUG` → `:debug`, `INFO` → `:info`, 25 → `:notice`, `WARNING` →
  `:warning`, `ERROR` → `:error`, `CRITICAL` → `:critical`; a level between
  two rounds down). Every line has the metadata `pool: name` and
  `python_worker: os_pid`; a line written during a call also has
  `caller: pid` (while the call is running), `python_module` and
  `python_function` (the call's target: for a call on an object, its type).
  Text without a final newline is logged when the call ends.

  When lines come faster than `:log_rate` or more than `:log_queue` wait, the
  excess is dropped and one warning says how many: `"dropped N lines of
  Python output"`. The pool process never holds more than that in its
  mailbox, however much Python prints.
  """

  use GenServer

  require Logger

  alias SnakeBridge.{Error, NIF}

  @enforce_keys [:name, :resource]
  defstruct [:name, :resource, config: %{}, last_start_failure: nil, readers: %{}]

  @typedoc "The state of a pool process: its name, the native pool resource, and the reader process of each worker."
  @type t :: %__MODULE__{
          name: atom(),
          resource: reference(),
          config: map(),
          last_start_failure: String.t() | nil,
          readers: %{non_neg_integer() => pid()}
        }

  @typedoc "An option of `start_link/1`; see the module documentation."
  @type option ::
          {:name, atom()}
          | {:size, pos_integer()}
          | {:python, String.t()}
          | {:python_path, [Path.t()]}
          | {:env, [{String.t(), String.t()}] | %{optional(String.t()) => String.t()}}
          | {:max_queue, pos_integer()}
          | {:max_calls, pos_integer() | nil}
          | {:max_memory_mb, pos_integer() | nil}
          | {:health_check_interval, pos_integer()}
          | {:health_check_timeout, pos_integer()}
          | {:cancel_grace, pos_integer()}
          | {:log_queue, pos_integer()}
          | {:log_rate, pos_integer()}
          | {:output, :log | :caller}
          | {:circuit_breaker, boolean() | [circuit_breaker_option()]}
          | {:cluster, boolean() | [SnakeBridge.Cluster.option()]}
          | {:init, [init_option()]}
          | {:python_env, [SnakeBridge.PythonEnv.option()] | nil}

  @typedoc "An option of `:init`; see the module documentation."
  @type init_option ::
          {:imports, [String.t()]}
          | {:code, String.t() | nil}
          | {:timeout, pos_integer()}
          | {:shared_memory, boolean()}
          | {:max_payload, pos_integer()}

  @typedoc "An option of `:circuit_breaker`: milliseconds, or a count for `:failures`."
  @type circuit_breaker_option ::
          {:failures, pos_integer()} | {:window, pos_integer()} | {:cooldown, pos_integer()}

  @circuit_breaker_defaults [failures: 10, window: 10_000, cooldown: 5_000]

  # The largest frame the socket carries; larger payloads need shared memory.
  @socket_frame_limit 64 * 1024 * 1024
  # With shared memory: room for a 64 MiB value (a tensor, a blob) and its
  # envelope, which the socket's limit leaves none for.
  @shared_max_payload 256 * 1024 * 1024

  @doc """
  A child specification; its id is `{SnakeBridge.Pool, name}`, so several
  pools can live under one supervisor.
  """
  @spec child_spec([option()]) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.get(opts, :name, :default)},
      start: {__MODULE__, :start_link, [opts]},
      type: :worker,
      shutdown: 10_000
    }
  end

  @doc """
  Starts a pool linked to the caller. See the module documentation for the
  options.

  Returns `{:error, %SnakeBridge.Error{reason: :already_started}}` when a pool
  of that name is already running. Raises `ArgumentError` on invalid options.

  ## Examples

      {:ok, pid} = SnakeBridge.Pool.start_link(name: :scratch, size: 1)
  """
  @spec start_link([option()]) :: GenServer.on_start()
  def start_link(opts \\ []) do
    GenServer.start_link(__MODULE__, config!(opts))
  end

  @doc false
  @spec config!([option()]) :: map()
  def config!(opts) do
    # :max_payload's default depends on :shared_memory.
    opts =
      Keyword.validate!(opts, [
        :max_payload,
        name: :default,
        size: System.schedulers_online(),
        python: nil,
        python_path: [],
        env: [],
        max_queue: 10_000,
        max_calls: nil,
        max_memory_mb: nil,
        health_check_interval: 5_000,
        health_check_timeout: 5_000,
        cancel_grace: 2_000,
        log_queue: 1_000,
        log_rate: 1_000,
        output: :log,
        circuit_breaker: false,
        cluster: false,
        init: [],
        python_env: nil,
        shared_memory: true
      ])

    {worker_args, start_timeout} = SnakeBridge.WorkerInit.options!(opts[:init])
    shared_memory = check!(opts, :shared_memory, &is_boolean/1, "a boolean")

    %{
      name: check!(opts, :name, &is_atom/1, "an atom"),
      size: check!(opts, :size, &pos_integer?/1, "a positive integer"),
      python: resolve_python(opts[:python] || default_python()),
      python_path: python_path!(opts[:python_path]),
      env: env!(opts[:env]),
      max_queue: check!(opts, :max_queue, &pos_integer?/1, "a positive integer"),
      max_calls:
        check!(opts, :max_calls, &(&1 == nil or pos_integer?(&1)), "a positive integer or nil"),
      max_memory_mb:
        check!(opts, :max_memory_mb, &(&1 == nil or pos_integer?(&1)), "a positive integer or nil"),
      health_check_interval:
        check!(opts, :health_check_interval, &pos_integer?/1, "a positive integer"),
      health_check_timeout:
        check!(opts, :health_check_timeout, &pos_integer?/1, "a positive integer"),
      cancel_grace: check!(opts, :cancel_grace, &pos_integer?/1, "a positive integer"),
      log_queue: check!(opts, :log_queue, &pos_integer?/1, "a positive integer"),
      log_rate: check!(opts, :log_rate, &(pos_integer?(&1) and &1 < 2 ** 32), "a positive integer"),
      output: check!(opts, :output, &(&1 in [:log, :caller]), ":log or :caller"),
      circuit_breaker: circuit_breaker!(opts[:circuit_breaker]),
      cluster: SnakeBridge.Cluster.options!(opts[:cluster]),
      worker_args: worker_args,
      start_timeout: start_timeout,
      python_env: opts[:python_env] && SnakeBridge.PythonEnv.options!(opts[:python_env]),
      shared_memory: shared_memory,
      max_payload: max_payload!(Keyword.fetch(opts, :max_payload), shared_memory)
    }
  end

  @doc """
  Replaces the pool's Python workers with new processes, one at a time,
  and returns `:ok` once every one is new: to pick up changed code, or to
  start from fresh interpreters.

  Each worker in turn takes no new calls, answers the ones it has (its
  waiting `async def` tasks included), and exits; the next one is replaced
  only once its replacement runs. Meanwhile calls go to the other workers
  (with `size: 1`, they wait for the new worker within their timeout), so
  no call fails for the restart. What lived in the old processes is gone:
  their objects (`:stale_handle`), module state, and open streams (which
  end with `:worker_exited`). A worker stuck in a long call holds the
  restart up until it answers. Blocks the caller until done.

  Returns `{:error, %SnakeBridge.Error{}}` when no such pool runs
  (`:pool_not_found`) or it stops meanwhile (`:python_unavailable`).
  Raises `ArgumentError` when `name` is not an atom.

  ## Examples

      :ok = SnakeBridge.Pool.restart(:default)
  """
  @spec restart(atom()) :: :ok | {:error, Error.t()}
  def restart(name \\ :default), do: NIF.pool_restart(SnakeBridge.Args.pool!(name))

  defp max_payload!(:error, true), do: @shared_max_payload
  defp max_payload!(:error, false), do: @socket_frame_limit

  defp max_payload!({:ok, bytes}, shared_memory) do
    limit = if shared_memory, do: 2 ** 32 - 1, else: @socket_frame_limit

    unless is_integer(bytes) and bytes >= 1_048_576 and bytes <= limit do
      also = if shared_memory, do: "", else: " (the socket's frame limit, without :shared_memory)"

      raise ArgumentError,
            "expected :max_payload to be an integer from 1048576 to #{limit}#{also}, got: #{inspect(bytes)}"
    end

    bytes
  end

  ## GenServer

  @impl true
  def init(config) do
    # Trap exits so that a supervisor's shutdown runs terminate/2, which stops
    # the Python processes right away instead of waiting for the resource to be
    # garbage collected.
    Process.flag(:trap_exit, true)

    {name, native_config} = Map.pop(config, :name)
    {cluster, native_config} = Map.pop(native_config, :cluster)
    {python_env, native_config} = Map.pop(native_config, :python_env)

    native_config =
      native_config
      |> Map.merge(%{
        worker_path: Application.app_dir(:snakebridge, "priv/python"),
        owner: self(),
        start_error: nil
      })
      |> with_python_env(name, python_env)

    case NIF.pool_start(name, native_config) do
      {:ok, resource} ->
        # The resource lives in this process's state only: when the process
        # dies, the resource is collected and the runtime stops the workers.
        if cluster, do: SnakeBridge.Cluster.join(name, native_config.size, cluster)
        {:ok, %__MODULE__{name: name, resource: resource, config: native_config}}

      {:error, %Error{} = error} ->
        {:stop, error}
    end
  end

  @impl true
  def handle_info({:snakebridge_log, os_pid, level, line, call_metadata}, state) do
    metadata = [python_worker: os_pid, pool: state.name] ++ Map.to_list(call_metadata)
    Logger.log(level, line, metadata)
    {:noreply, state}
  end

  def handle_info({:snakebridge_log_dropped, count}, state) do
    Logger.warning("dropped #{count} lines of Python output", pool: state.name)
    {:noreply, state}
  end

  # A worker is ready: its replies are read by a process of their own,
  # which is told when the worker exits.
  def handle_info({:snakebridge_reader, os_pid, fd, reader}, state) do
    pid = SnakeBridge.Reader.start_link(reader, fd)
    {:noreply, %{state | readers: Map.put(state.readers, os_pid, pid)}, {:continue, :forget_reader}}
  end

  def handle_info({:snakebridge_reader_exited, os_pid}, state) do
    {pid, readers} = Map.pop(state.readers, os_pid)
    if pid, do: send(pid, :worker_exited)
    {:noreply, %{state | readers: readers}}
  end

  # A slot that cannot start Python retries with backoff for as long as the
  # pool runs; the same failure is logged as a warning once, then at debug.
  def handle_info({:snakebridge_worker, os_pid, {:start_failed, message} = event}, state) do
    SnakeBridge.Telemetry.worker_event(state.name, os_pid, event)
    level = if message == state.last_start_failure, do: :debug, else: :warning

    Logger.log(level, fn -> "Python worker failed to start: #{message}" end, pool: state.name)

    {:noreply, %{state | last_start_failure: message}}
  end

  def handle_info({:snakebridge_worker, os_pid, event}, state) do
    SnakeBridge.Telemetry.worker_event(state.name, os_pid, event)
    metadata = [python_worker: os_pid, pool: state.name]

    Logger.log(
      event_level(event),
      fn -> "Python worker #{os_pid}: #{describe(event)}" end,
      metadata
    )

    state =
      case event do
        {:started, _} -> %{state | last_start_failure: nil}
        _ -> state
      end

    {:noreply, state}
  end

  def handle_info({:snakebridge_circuit, from, to, reason}, state) do
    SnakeBridge.Telemetry.circuit_change(state.name, from, to, reason)
    level = if to == :open, do: :warning, else: :info
    why = if reason, do: ": #{reason}", else: ""
    Logger.log(level, "circuit breaker #{from} -> #{to}#{why}", pool: state.name)
    {:noreply, state}
  end

  def handle_info({:EXIT, _from, _reason}, state) do
    # Only the parent's exit matters, and GenServer handles that one itself.
    {:noreply, state}
  end

  def handle_info(message, state) do
    Logger.debug(fn ->
      "#{inspect(__MODULE__)} #{inspect(state.name)} ignored #{inspect(message)}"
    end)

    {:noreply, state}
  end

  # The reader alone must hold the worker's socket, so that should it die,
  # the runtime sees it go and replaces the worker: the message it came in
  # is collected now, not at this process's next garbage collection, which
  # an idle pool process may not have for a long time.
  @impl true
  def handle_continue(:forget_reader, state) do
    :erlang.garbage_collect()
    {:noreply, state}
  end

  @impl true
  def terminate(_reason, %__MODULE__{resource: resource}) do
    NIF.pool_stop(resource)
  end

  ## Helpers

  # The pool runs in the environment once it is ready; when it cannot be
  # built, every start fails with the installer's message, so calls get
  # :python_unavailable saying why.
  defp with_python_env(config, _name, nil), do: config

  defp with_python_env(config, name, python_env) do
    case SnakeBridge.PythonEnv.build(python_env, config.python, pool: name) do
      {:ok, python} -> %{config | python: python}
      {:error, %Error{message: message}} -> %{config | start_error: message}
    end
  end

  # Events from the runtime: {:started, python}, {:exited, %Error{}} (with
  # :exit_status or :signal in its details), {:recycling, :max_calls |
  # :max_memory} and {:start_failed, message}.
  defp event_level({:started, _python}), do: :debug
  defp event_level({:exited, %Error{details: %{exit_status: 0}}}), do: :debug
  defp event_level({:exited, _}), do: :warning
  defp event_level({:start_failed, _}), do: :warning
  defp event_level(_), do: :debug

  defp describe({:started, python}), do: "started (#{python})"
  defp describe({:exited, %Error{} = error}), do: "exited: #{Exception.message(error)}"
  defp describe({:start_failed, message}) when is_binary(message), do: "failed to start: #{message}"
  defp describe({:recycling, reason}), do: "recycling (#{reason})"
  defp describe(event), do: inspect(event)

  defp default_python do
    case System.get_env("SNAKEBRIDGE_PYTHON") do
      nil -> "python3"
      "" -> "python3"
      python -> python
    end
  end

  # A path is made absolute; a bare command is looked up in PATH and kept as
  # given when it is not found, so the error names what was tried.
  defp resolve_python(python) when is_binary(python) do
    cond do
      String.contains?(python, "/") -> Path.expand(python)
      exe = System.find_executable(python) -> exe
      true -> python
    end
  end

  defp resolve_python(python) do
    raise ArgumentError, "expected :python to be a string, got: #{inspect(python)}"
  end

  defp python_path!(paths) when is_list(paths) do
    Enum.map(paths, fn
      path when is_binary(path) ->
        Path.expand(path)

      other ->
        raise ArgumentError, "expected :python_path entries to be strings, got: #{inspect(other)}"
    end)
  end

  defp python_path!(other) do
    raise ArgumentError, "expected :python_path to be a list of directories, got: #{inspect(other)}"
  end

  defp env!(env) when is_list(env) or is_map(env) do
    Enum.map(env, fn
      {key, value}
      when (is_binary(key) or is_atom(key)) and (is_binary(value) or is_number(value)) ->
        {to_string(key), to_string(value)}

      other ->
        raise ArgumentError,
              "expected :env entries to be {\"NAME\", \"value\"}, got: #{inspect(other)}"
    end)
  end

  defp env!(other) do
    raise ArgumentError,
          "expected :env to be a list of {\"NAME\", \"value\"}, got: #{inspect(other)}"
  end

  defp circuit_breaker!(false), do: nil
  defp circuit_breaker!(true), do: circuit_breaker!([])

  defp circuit_breaker!(opts) when is_list(opts) do
    opts = SnakeBridge.Args.sub_opts!(opts, @circuit_breaker_defaults, :circuit_breaker)

    for {key, value} <- opts, into: %{} do
      unless pos_integer?(value) do
        raise ArgumentError,
              "expected :circuit_breaker's #{inspect(key)} to be a positive integer, got: #{inspect(value)}"
      end

      {key, value}
    end
  end

  defp circuit_breaker!(other) do
    raise ArgumentError,
          "expected :circuit_breaker to be a boolean or a keyword list of :failures, :window and :cooldown, got: #{inspect(other)}"
  end

  defp check!(opts, key, valid?, expected) do
    value = Keyword.fetch!(opts, key)

    if valid?.(value) do
      value
    else
      raise ArgumentError, "expected #{inspect(key)} to be #{expected}, got: #{inspect(value)}"
    end
  end

  defp pos_integer?(value), do: is_integer(value) and value > 0

  defimpl Inspect do
    def inspect(%SnakeBridge.Pool{name: name, config: config}, _opts) do
      "#SnakeBridge.Pool<#{Kernel.inspect(name)}, size: #{Map.get(config, :size)}, python: #{Kernel.inspect(Map.get(config, :python))}>"
    end
  end
end
