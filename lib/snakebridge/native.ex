defmodule SnakeBridge.Native do
  @moduledoc """
  The low-level, mailbox-native way to call Python.

  `call_async/4` queues a call and returns a reference at once; the reply
  arrives later as exactly one message in the calling process's mailbox:

      {:snakebridge, ref, {:ok, value}}
      {:snakebridge, ref, {:error, %SnakeBridge.PythonError{} | %SnakeBridge.Error{}}}

  Receive it yourself, or with `SnakeBridge.await/2`; `SnakeBridge.cancel/1`
  withdraws a call. `SnakeBridge.call/4` is the synchronous form built on
  these.
  """

  import Bitwise

  alias SnakeBridge.{Args, NIF, Object, Prepare, Session}

  # The protocol's call flags (native/snakebridge_protocol/src/message.rs).
  @as_handle 1
  @stream 2
  @as_arrow 4
  @timed 8
  @burst 16
  # The host's own flags, above the protocol's (native/snakebridge_nif/src/call.rs).
  @output_caller 0x10000
  @output_log 0x20000
  @spread 0x40000
  @waiting 0x80000
  # Flags that ask for something only the process that made the request can
  # use: a relay running it for another node's process clears them.
  @caller_only @timed ||| @waiting

  # What call_opts!/2 reads for an option that is absent.
  @unset :"$snakebridge_unset"

  # Where SnakeBridge.Session.run/2 and pin/1 keep the object whose worker
  # the process's calls go to.
  @pin :"$snakebridge_worker"

  @typedoc "Options of `call_async/4`."
  @type option ::
          {:kwargs, keyword() | map()}
          | {:pool, SnakeBridge.Types.pool()}
          | {:as, :value | :handle | :arrow}
          | {:output, :caller | :log}
          | {:worker, Object.t() | Session.t()}

  @doc """
  Queues a call to `module.function(*args, **kwargs)` in a pool's Python
  workers and returns at once.

  `module` and `function` are strings or atoms; both may be dotted paths
  (`"os.path"`, `"JSONDecoder.decode"`). `module` may also be a
  `SnakeBridge.Object`: `function` then names a method (or any attribute
  path) of it, or is `nil` to call the object itself. Arguments are
  converted as described in the type mapping of `SnakeBridge`; they may
  contain `SnakeBridge.Object`s, and the call then runs in the worker that
  holds them.

  Returns `{:ok, ref}`; the result arrives later as
  `{:snakebridge, ref, result}`. Returns `{:error, %SnakeBridge.Error{}}` when
  the call cannot even be queued: no such pool (`:pool_not_found`), a full
  queue (`:overloaded`), an argument with no Python equivalent
  (`:unsupported_type`, the message names where in the arguments it is),
  values nested too deep or too large (`:nesting_too_deep`,
  `:payload_too_large`), or objects whose worker is gone (`:stale_handle`)
  or that live in different workers (`:handle_conflict`).

  Raises `ArgumentError`, before anything is queued, when an argument or
  option is invalid (`opts` or `args` not a proper list, `:kwargs` neither a
  keyword list nor a map with atom or string keys, a name neither a string
  nor an atom, an unknown option...); the message names it.

  ## Options

    * `:kwargs` — keyword arguments, as a keyword list or a map with atom or
      string keys. Default `[]`.
    * `:pool` — the name of the pool to run in. Default: the pool of the
      target object, else `:default`.
    * `:as` — `:handle` returns the result as a `SnakeBridge.Object` whatever
      its type; `:arrow` returns a table (a pandas `DataFrame`, a pyarrow
      `Table`) as a `SnakeBridge.Arrow` (needs pyarrow in the worker's
      Python); `:value` (the default) converts it when it
      has an Elixir equivalent.
    * `:output` — `:caller` sends what the call prints to `sys.stdout` and
      `sys.stderr` to the caller, as `{:snakebridge_output, ref, device, line}`
      messages (`device` is `:stdout` or `:stderr`) ahead of the reply,
      which `SnakeBridge.await/2` writes to the caller's group leader;
      `:log` logs it. Default: the pool's `:output`.
    * `:worker` — a `SnakeBridge.Object` or `SnakeBridge.Session`: the call
      runs in the worker that holds it. Default: the process's pin
      (`SnakeBridge.Session.run/2`), else where the caller's objects are,
      else the least busy worker.

  ## Examples

      {:ok, ref} = SnakeBridge.Native.call_async("math", "sqrt", [16.0])

      receive do
        {:snakebridge, ^ref, {:ok, value}} -> value
        {:snakebridge, ^ref, {:error, error}} -> raise error
      after
        5_000 -> SnakeBridge.cancel(ref)
      end
      #=> 4.0

      {:ok, ref} = SnakeBridge.Native.call_async(:builtins, :round, [2.675], kwargs: [ndigits: 2])
  """
  @spec call_async(SnakeBridge.Types.target(), SnakeBridge.Types.name() | nil, list(), [option()]) ::
          {:ok, reference()} | {:error, SnakeBridge.Error.t()}
  def call_async(module, function, args \\ [], opts \\ [])

  def call_async(module, function, args, opts) do
    module |> request!(function, args, opts) |> submit(:infinity)
  end

  # call_async/4 for SnakeBridge.call/4, which waits for the reply at
  # once, with a deadline: the worker skips the call instead of starting
  # it once `timeout` milliseconds have passed. {:alone, ref} instead of
  # {:ok, ref} means the call went to a worker that runs no other call, so
  # its reply may come within microseconds.
  @doc false
  def start_call(module, function, args, timeout) when is_binary(module) do
    request =
      {:default, module, Args.name!(function, :function), Args.list!(args, :args), [],
       {@waiting, 0}, nil}

    submit(request, timeout)
  end

  # start_call/4 with options, which also hold the call's :timeout
  # (`default_timeout` when absent): what start_call/4 returns, and the
  # timeout.
  @doc false
  def start_call(target, function, args, opts, default_timeout) do
    {pool, as, output, worker, kwargs, timeout} = call_opts!(opts, true)
    timeout = Args.timeout!(default(timeout, default_timeout))

    request = request_of(target, function, args, pool, as, output, worker, kwargs, nil)
    {request |> add_flags(@waiting) |> submit(timeout), timeout}
  end

  # request!/4 for SnakeBridge.Telemetry: the worker reports its timing
  # with the reply.
  @doc false
  def timed_request!(target, function, args, opts) do
    target |> request!(function, args, opts) |> add_flags(@timed)
  end

  defp add_flags({pool, target, function, args, kwargs, {flags, window}, near}, extra),
    do: {pool, target, function, args, kwargs, {flags ||| extra, window}, near}

  # Checks a call's arguments and options; raises ArgumentError on the
  # first bad one. `stream` asks for the result's items, `window` of them
  # before the consumer grants more (see SnakeBridge.stream/4).
  @doc false
  def request!(target, function, args, opts, stream \\ nil) do
    {pool, as, output, worker, kwargs, @unset} = call_opts!(opts, false)
    request_of(target, function, args, pool, as, output, worker, kwargs, stream)
  end

  defp request_of(target, function, args, pool, as, output, worker, kwargs, stream) do
    flags = as_flag(default(as, :value)) ||| output_flag(default(output, nil))
    worker = worker!(default(worker, nil))

    mode =
      case stream do
        nil -> {flags, 0}
        window -> {flags ||| @stream, Args.window!(window)}
      end

    {pool(target, worker, default(pool, nil)), target!(target), function!(target, function),
     Args.list!(args, :args), Args.kwargs!(default(kwargs, [])), mode, worker && worker.ref}
  end

  # A call's options as {pool, as, output, worker, kwargs, timeout}, each
  # @unset when absent, read in one pass: every call pays for this, and
  # Keyword.validate!/2 followed by a lookup per option took three times
  # as long (0.2 µs). The first of repeated keys counts, as for
  # Keyword.get/2. Anything else gets Keyword.validate!/2's error.
  defp call_opts!(opts, timeout?) do
    case scan_opts(opts, timeout?, @unset, @unset, @unset, @unset, @unset, @unset) do
      :invalid ->
        # Raises: scan_opts/8 reads every list that Args.opts!/2 accepts.
        allowed = [:pool, :as, :output, :worker, :kwargs] ++ if(timeout?, do: [:timeout], else: [])
        Args.opts!(opts, allowed)

      read ->
        read
    end
  end

  defp scan_opts([], _, pool, as, output, worker, kwargs, timeout),
    do: {pool, as, output, worker, kwargs, timeout}

  defp scan_opts([{:pool, v} | rest], t?, @unset, as, output, worker, kwargs, timeout),
    do: scan_opts(rest, t?, v, as, output, worker, kwargs, timeout)

  defp scan_opts([{:as, v} | rest], t?, pool, @unset, output, worker, kwargs, timeout),
    do: scan_opts(rest, t?, pool, v, output, worker, kwargs, timeout)

  defp scan_opts([{:output, v} | rest], t?, pool, as, @unset, worker, kwargs, timeout),
    do: scan_opts(rest, t?, pool, as, v, worker, kwargs, timeout)

  defp scan_opts([{:worker, v} | rest], t?, pool, as, output, @unset, kwargs, timeout),
    do: scan_opts(rest, t?, pool, as, output, v, kwargs, timeout)

  defp scan_opts([{:kwargs, v} | rest], t?, pool, as, output, worker, @unset, timeout),
    do: scan_opts(rest, t?, pool, as, output, worker, v, timeout)

  defp scan_opts([{:timeout, v} | rest], true, pool, as, output, worker, kwargs, @unset),
    do: scan_opts(rest, true, pool, as, output, worker, kwargs, v)

  defp scan_opts([{key, _} | rest], t?, pool, as, output, worker, kwargs, timeout)
       when key in [:pool, :as, :output, :worker, :kwargs] or (key == :timeout and t?),
       do: scan_opts(rest, t?, pool, as, output, worker, kwargs, timeout)

  defp scan_opts(_, _, _, _, _, _, _, _), do: :invalid

  defp default(@unset, default), do: default
  defp default(value, _default), do: value

  # Queues a call checked by request!/5 or start_call/5, in a pool of this
  # node or, for a clustered pool, of the node SnakeBridge.Cluster chooses.
  # A call with no `:worker` of its own runs where the process is pinned,
  # if it is, in that pool: on the pin's node too.
  @doc false
  def submit(request, timeout), do: request |> pinned() |> route(timeout)

  defp route(request, timeout) do
    SnakeBridge.Cluster.submit(request, timeout) || submit_here(request, timeout)
  end

  # The NIF cannot write another node's object: a call that has one and
  # stays here names a pool the object does not belong to.
  defp submit_here(request, timeout) do
    with {:error, %SnakeBridge.Error{reason: :unsupported_type}} = error <-
           submit_local(request, timeout) do
      SnakeBridge.Cluster.misrouted(request) || error
    end
  end

  # Queues a call in a pool of this node.
  @doc false
  def submit_local({pool, target, function, args, kwargs, mode, near}, timeout) do
    # Structs the NIF cannot write (Nx tensors, structs with a
    # SnakeBridge.Encoder implementation) are converted in Elixir and the
    # call is encoded again; only calls that hold such structs pay for that.
    with {:error, %SnakeBridge.Error{reason: :unsupported_type}} = error <-
           nif_submit(pool, target, function, args, kwargs, timeout, mode, near) do
      case Prepare.call(args, kwargs) do
        {:ok, args, kwargs} -> nif_submit(pool, target, function, args, kwargs, timeout, mode, near)
        :unchanged -> error
      end
    end
  end

  # Makes an object to anchor a session: on the workers in turn, so that
  # sessions spread over the pool, whatever the process is pinned to or
  # holds; on another node for a clustered pool, as any call.
  @doc false
  def submit_anchor(pool, timeout) do
    route({pool, "builtins", "object", [], [], {@as_handle ||| @spread, 0}, nil}, timeout)
  end

  # Whether a request asks to spread over the workers, whoever makes it.
  @doc false
  def spread?(request), do: flag?(request, @spread)

  # Whether a request asks for a stream's items.
  @doc false
  def stream?(request), do: flag?(request, @stream)

  defp flag?({_pool, _target, _function, _args, _kwargs, {flags, _window}, _near}, flag),
    do: (flags &&& flag) != 0

  # Flags a call made on behalf of other processes (the cluster's relay):
  # it follows no process's objects and spreads over the workers. The relay
  # passes plain replies on, so it asks for no timing, and polls in its own
  # way (see ask_alone/1).
  @doc false
  def spread({pool, target, function, args, kwargs, {flags, window}, near}) do
    flags = (flags ||| @spread) &&& bnot(@caller_only)
    {pool, target, function, args, kwargs, {flags, window}, near}
  end

  # Tells the worker the call is one of a burst (the relay runs others
  # meanwhile): after it, the worker polls only briefly for the next.
  @doc false
  def in_burst(request), do: add_flags(request, @burst)

  # The relay's form of start_call/4's request: the NIF answers
  # {:alone, ref} when the call went to a worker with nothing else to run.
  @doc false
  def ask_alone(request), do: add_flags(request, @waiting)

  @doc false
  def pin_key, do: @pin

  defp pinned({pool, _target, _function, _args, _kwargs, _mode, nil} = request) do
    case Process.get(@pin) do
      %Object{pool: ^pool, ref: ref} -> put_elem(request, 6, ref)
      _ -> request
    end
  end

  defp pinned(request), do: request

  defp nif_submit(pool, target, function, args, kwargs, timeout, mode, near) do
    # The normal-scheduler NIF encodes small calls in place; it answers :dirty
    # when the arguments are too big to encode within a scheduler time slice,
    # and the dirty-CPU variant does the same work off the normal schedulers.
    case NIF.submit(pool, target, function, args, kwargs, timeout, mode, near) do
      {:ok, _} = queued ->
        queued

      {:alone, _} = queued ->
        queued

      :dirty ->
        NIF.submit_dirty(pool, target, function, args, kwargs, timeout, mode, near)
        |> refused(pool, target, function)

      refusal ->
        refused(refusal, pool, target, function)
    end
  end

  defp refused({:error, %SnakeBridge.Error{reason: :overloaded}} = error, pool, target, function) do
    SnakeBridge.Telemetry.overloaded(pool, target, function)
    error
  end

  defp refused(result, _pool, _target, _function), do: result

  defp as_flag(:value), do: 0
  defp as_flag(:handle), do: @as_handle
  defp as_flag(:arrow), do: @as_arrow

  defp as_flag(other) do
    raise ArgumentError, "expected :as to be :value, :handle or :arrow, got: #{inspect(other)}"
  end

  defp output_flag(nil), do: 0
  defp output_flag(:caller), do: @output_caller
  defp output_flag(:log), do: @output_log

  defp output_flag(other) do
    raise ArgumentError, "expected :output to be :caller or :log, got: #{inspect(other)}"
  end

  defp worker!(nil), do: nil
  defp worker!(%Session{object: object}), do: Args.object!(object)
  defp worker!(%Object{} = object), do: Args.object!(object)

  defp worker!(other) do
    raise ArgumentError,
          "expected :worker to be a SnakeBridge.Object or a SnakeBridge.Session, got: " <>
            inspect(other)
  end

  defp pool(%Object{pool: pool}, _worker, nil), do: pool
  defp pool(_module, %Object{pool: pool}, nil), do: pool
  defp pool(_module, nil, nil), do: :default

  defp pool(_target, _worker, pool) when is_atom(pool), do: pool

  defp pool(_target, _worker, pool) do
    raise ArgumentError, "expected :pool to be an atom, got: #{inspect(pool)}"
  end

  defp target!(%Object{} = object), do: Args.object!(object)
  defp target!(module), do: Args.name!(module, :module)

  defp function!(%Object{}, nil), do: nil
  defp function!(_target, function), do: Args.name!(function, :function)
end
