defmodule SnakeBridge do
  @moduledoc """
  Call Python from Elixir.

  Python runs in pools of separate OS processes managed by native Rust code
  inside the BEAM, so a crash or hang in Python never takes the VM down, while
  a call costs microseconds and its reply lands straight in the caller's
  mailbox. The application starts a pool named `:default`; add more with
  `SnakeBridge.Pool`.

      iex> SnakeBridge.call("math", "sqrt", [16.0])
      {:ok, 4.0}

  ## Type mapping

  Elixir to Python:

  | Elixir                                          | Python                         |
  |-------------------------------------------------|--------------------------------|
  | `nil`, `true`, `false`                          | `None`, `True`, `False`        |
  | integer (any size)                              | `int`                          |
  | float                                           | `float`                        |
  | `:nan`, `:infinity`, `:neg_infinity`            | `nan`, `inf`, `-inf`           |
  | other atoms                                     | `str`                          |
  | binary (valid UTF-8)                            | `str`                          |
  | binary (not UTF-8), `SnakeBridge.bytes(bin)`    | `bytes`                        |
  | list                                            | `list`                         |
  | tuple                                           | `tuple`                        |
  | map                                             | `dict` (keys by the same rules)|
  | `MapSet`                                        | `set`                          |

  `Date`, `Time`, `NaiveDateTime`, `DateTime`, `Decimal`,
  `SnakeBridge.Tensor` (and `Nx.Tensor`), `SnakeBridge.Arrow`,
  `SnakeBridge.Timedelta` and `SnakeBridge.Construct` map to their Python
  counterparts, and structs with a `SnakeBridge.Encoder` implementation to
  what it returns (README, "Type mapping"). Pids, ports, references,
  functions, bitstrings that are not binaries and other structs give `{:error, %SnakeBridge.Error{reason: :unsupported_type}}`
  whose message says where in the arguments the value was (`"args[0][2]"`).

  Python to Elixir:

  | Python                                  | Elixir                                          |
  |-----------------------------------------|-------------------------------------------------|
  | `None`, `True`, `False`                 | `nil`, `true`, `false`                          |
  | `int` (any size)                        | integer                                         |
  | `float`                                 | float; `nan`/`inf`/`-inf` → `:nan`, `:infinity`, `:neg_infinity` |
  | `str`                                   | binary                                          |
  | `bytes`, `bytearray`, `memoryview`      | binary                                          |
  | `list`                                  | list                                            |
  | `tuple`                                 | tuple                                           |
  | `dict`                                  | map (string keys stay binaries, never atoms)    |
  | `set`, `frozenset`                      | `MapSet`                                        |

  numpy scalars, numeric numpy arrays (`SnakeBridge.Tensor`), dates and
  times, `timedelta` (`SnakeBridge.Timedelta`), `decimal.Decimal`, `UUID`,
  paths, pandas `NaT` and types registered with
  `snakebridge_worker.register_encoder` come back as data too (README, "Type
  mapping"). Any other Python result (a class instance, a function, a
  generator...) comes back as a `SnakeBridge.Object`: a handle to the object,
  which stays in its worker until no Elixir process refers to the handle any
  more. Call its methods with `method/4`, read and write its attributes with
  `getattr/3` and `setattr/4`, call it with `call/3`, or pass it to other
  calls. So a round trip turns atoms (other than the three float atoms, `nil`,
  `true` and `false`) into strings, map keys included, and
  `SnakeBridge.bytes(bin)` into `bin`.

  A process's calls follow its objects to their worker, so the objects it
  makes live together; `SnakeBridge.Session` puts the work of several
  processes in one worker.

  ## Objects, streams, async and eval

      iex> {:ok, rng} = SnakeBridge.call("random", "Random", [42])
      iex> SnakeBridge.method!(rng, "randint", [1, 100])
      82
      iex> SnakeBridge.method!(rng, "randint", [1, 100])
      15

  `stream/4` iterates a Python generator (or any iterable, sync or async) as
  a lazy Elixir `Stream`, with backpressure. A function defined with
  `async def` is awaited on an event loop inside the worker, so many such
  calls run concurrently in one worker. `eval/3` runs a piece of Python
  source and returns its last expression's value; in a namespace made by
  `namespace/1`, what it defines stays for the next `eval/3`, as in the
  cells of a notebook.

  ## Errors

  A Python exception comes back as `{:error, %SnakeBridge.PythonError{}}`
  (import failures and missing attributes included); everything else as
  `{:error, %SnakeBridge.Error{}}` whose `reason` is one of
  `t:SnakeBridge.Types.reason/0`.

  Every function checks its arguments first: a bad one (a timeout outside
  `t:SnakeBridge.Types.timeout_ms/0`, an improper list, an unknown option, a
  name that is neither a string nor an atom, something that is not a
  `SnakeBridge.Object`...) raises `ArgumentError` naming it, and nothing is
  sent to Python.
  """

  alias SnakeBridge.{Args, Error, NIF, Native, Object, Output, Poll}

  @default_timeout 5_000

  # When cancel answers :replied, the reply is in or on its way to the
  # caller's mailbox (the runtime may still be decoding a large result). It
  # always arrives; the bound only keeps a misuse (awaiting or cancelling from
  # another process) from blocking forever.
  @reply_grace 5_000

  @typedoc "Options of `call/4`."
  @type call_option ::
          {:kwargs, keyword() | map()}
          | {:timeout, SnakeBridge.Types.timeout_ms()}
          | {:pool, SnakeBridge.Types.pool()}
          | {:as, :value | :handle | :arrow}
          | {:output, :caller | :log}
          | {:worker, Object.t() | SnakeBridge.Session.t()}

  # Items a stream may send ahead of its consumer, by default.
  @default_window 64

  @doc """
  Calls `module.function(*args, **kwargs)` in Python and waits for the result.

  `module` and `function` are strings or atoms; dotted paths work for both
  (`"os.path"`, `"datetime.date", "today"`, `"json", "JSONDecoder.decode"`).

  Called with a callable `SnakeBridge.Object` instead,
  `call(object, args \\\\ [], opts \\\\ [])` calls the object itself:
  `object(*args, **kwargs)`.

  Returns `{:ok, value}`, `{:error, %SnakeBridge.PythonError{}}` when Python
  raised, or `{:error, %SnakeBridge.Error{}}`. When it returns, no message for
  this call is in, or will later arrive in, the caller's mailbox — after a
  timeout included.

  Raises `ArgumentError`, before anything is sent, when an argument or
  option is invalid; the message names it.

  ## Options

    * `:kwargs` — keyword arguments, a keyword list or a map. Default `[]`.
    * `:timeout` — milliseconds to wait (`0..4_294_967_295`), or `:infinity`.
      Default `5_000`.
      On timeout the call is cancelled and
      `{:error, %SnakeBridge.Error{reason: :timeout}}` returned.
    * `:pool` — the pool to run in. Default `:default` (for an object, its
      own pool).
    * `:as` — `:handle` returns the result as a `SnakeBridge.Object` whatever
      its type; `:arrow` returns a pandas `DataFrame` or pyarrow `Table` as
      a `SnakeBridge.Arrow` (Arrow IPC stream bytes). Default `:value`.
    * `:output` — `:caller` writes what the call prints to `sys.stdout` and
      `sys.stderr` to the caller's group leader (a Livebook cell,
      `ExUnit.CaptureIO`), in order, before the call returns; `:log` logs
      it. Default: the pool's `:output` (`:log` unless set).
    * `:worker` — a `SnakeBridge.Object` or `SnakeBridge.Session`: run in the
      worker that holds it (see `SnakeBridge.Session`). Default: where the
      process is pinned, else where its objects are, else the least busy
      worker.

  ## Examples

      iex> SnakeBridge.call("math", "sqrt", [2.0])
      {:ok, 1.4142135623730951}

      iex> {:ok, add} = SnakeBridge.eval("lambda a, b: a + b")
      iex> SnakeBridge.call(add, [1, 2])
      {:ok, 3}

      iex> SnakeBridge.call(:builtins, :sorted, [[3, 1, 2]], kwargs: [reverse: true])
      {:ok, [3, 2, 1]}

      iex> {:error, error} = SnakeBridge.call("operator", "truediv", [1, 0])
      iex> Exception.message(error)
      "ZeroDivisionError: division by zero"
  """
  @spec call(SnakeBridge.Types.target(), SnakeBridge.Types.name() | list(), list(), [call_option()]) ::
          SnakeBridge.Types.result()
  def call(module, function, args \\ [], opts \\ [])

  def call(%Object{} = object, args, opts, []) when is_list(args), do: call(object, nil, args, opts)

  def call(module, function, args, []) when is_binary(module) do
    if SnakeBridge.Telemetry.calls?() do
      SnakeBridge.Telemetry.call(module, function, args, [], @default_timeout)
    else
      case Native.start_call(module, function, args, @default_timeout) do
        {:ok, ref} -> await(ref, @default_timeout)
        {:alone, ref} -> Poll.reply(ref, @default_timeout, &await/2)
        {:error, _} = error -> error
      end
    end
  end

  def call(module, function, args, opts) do
    if SnakeBridge.Telemetry.calls?() do
      {timeout, opts} =
        opts
        |> Args.opts!([:kwargs, :pool, :as, :output, :worker, timeout: @default_timeout])
        |> Keyword.pop!(:timeout)

      SnakeBridge.Telemetry.call(module, function, args, opts, Args.timeout!(timeout))
    else
      case Native.start_call(module, function, args, opts, @default_timeout) do
        {{:ok, ref}, timeout} -> await(ref, timeout)
        {{:alone, ref}, timeout} -> Poll.reply(ref, timeout, &await/2)
        {{:error, _} = error, _timeout} -> error
      end
    end
  end

  @doc """
  Like `call/4`, but returns the value itself and raises the
  `SnakeBridge.PythonError` or `SnakeBridge.Error` on failure.

  ## Options

  The same as `call/4`.

  ## Examples

      iex> SnakeBridge.call!("os.path", "join", ["a", "b"])
      "a/b"
  """
  @spec call!(SnakeBridge.Types.target(), SnakeBridge.Types.name() | list(), list(), [call_option()]) ::
          term()
  def call!(module, function, args \\ [], opts \\ []) do
    case call(module, function, args, opts) do
      {:ok, value} -> value
      {:error, error} -> raise error
    end
  end

  @doc """
  Calls method `name` of a Python object: `object.name(*args, **kwargs)`, in
  the worker that holds it.

  `name` may be a dotted attribute path (`"config.to_dict"`). Returns what
  `call/4` returns; raises `ArgumentError` when `object` is not a
  `SnakeBridge.Object`, `name` is neither a string nor an atom, or an
  argument or option is invalid, as `call/4` does.

  ## Options

  The same as `call/4`.

  ## Examples

      iex> {:ok, date} = SnakeBridge.call("datetime", "date", [2024, 2, 29], as: :handle)
      iex> SnakeBridge.method(date, "weekday")
      {:ok, 3}
      iex> SnakeBridge.method(date, "replace", [], kwargs: [year: 2028])
      {:ok, ~D[2028-02-29]}
  """
  @spec method(Object.t(), SnakeBridge.Types.name(), list(), [call_option()]) ::
          SnakeBridge.Types.result()
  def method(object, name, args \\ [], opts \\ []),
    do: call(Args.object!(object), Args.name!(name, :method), args, opts)

  @doc """
  Like `method/4`, but returns the value itself and raises on failure.

  ## Examples

      iex> {:ok, date} = SnakeBridge.call("datetime", "date", [2024, 2, 29], as: :handle)
      iex> SnakeBridge.method!(date, "isoformat")
      "2024-02-29"
  """
  @spec method!(Object.t(), SnakeBridge.Types.name(), list(), [call_option()]) :: term()
  def method!(object, name, args \\ [], opts \\ []), do: unwrap!(method(object, name, args, opts))

  @doc """
  Reads attribute `name` of a Python object, or of a module.

  `target` is a `SnakeBridge.Object` (`getattr(object, name)`, in its
  worker) or a module name, a string or an atom, as for `call/4`
  (`getattr(:sys, :version)`; the module is imported first). `name` may be
  a dotted path (`"dtype.name"`, `"version_info.major"`). Returns what
  `call/4` returns; an attribute that is missing is a `PythonError`
  (`AttributeError`). Raises `ArgumentError` when `target` is neither,
  `name` is neither a string nor an atom, or an option is invalid.

  ## Options

  `:timeout` and `:as`, as for `call/4`; with a module name, also `:pool`.

  ## Examples

      iex> {:ok, date} = SnakeBridge.call("datetime", "date", [2024, 2, 29], as: :handle)
      iex> SnakeBridge.getattr(date, "year")
      {:ok, 2024}
      iex> SnakeBridge.getattr(date, "max.year")
      {:ok, 9999}

      iex> SnakeBridge.getattr("math", "pi")
      {:ok, 3.141592653589793}
  """
  @spec getattr(Object.t() | SnakeBridge.Types.name(), SnakeBridge.Types.name(), [call_option()]) ::
          SnakeBridge.Types.result()
  def getattr(target, name, opts \\ [])

  def getattr(%Object{} = object, name, opts) do
    object = Args.object!(object)
    args = [object, Args.name!(name, :attribute)]
    call("snakebridge_worker.dispatch", "attribute", args, object_opts(object, opts))
  end

  def getattr(module, name, opts)
      when is_binary(module) or (is_atom(module) and module not in [nil, true, false]) do
    args = [Args.name!(module, :module), Args.name!(name, :attribute)]
    opts = Args.opts!(opts, [:pool, :as, timeout: @default_timeout])
    call("snakebridge_worker.dispatch", "module_attribute", args, opts)
  end

  def getattr(target, _name, _opts) do
    raise ArgumentError, "expected a SnakeBridge.Object or a module name, got: #{inspect(target)}"
  end

  @doc """
  Like `getattr/3`, but returns the value itself and raises on failure.

  ## Examples

      iex> {:ok, date} = SnakeBridge.call("datetime", "date", [2024, 2, 29], as: :handle)
      iex> SnakeBridge.getattr!(date, "month")
      2
  """
  @spec getattr!(Object.t() | SnakeBridge.Types.name(), SnakeBridge.Types.name(), [call_option()]) ::
          term()
  def getattr!(object, name, opts \\ []), do: unwrap!(getattr(object, name, opts))

  @doc """
  Sets attribute `name` of a Python object to `value`:
  `setattr(object, name, value)`. `name` may be a dotted path
  (`"config.depth"`). Returns `:ok` or `{:error, error}`. Raises
  `ArgumentError` for a bad argument, as `method/4` does.

  ## Options

  `:timeout`, as for `call/4`.

  ## Examples

      iex> {:ok, ns} = SnakeBridge.call("types", "SimpleNamespace", [], kwargs: [a: 1])
      iex> SnakeBridge.setattr(ns, "b", 2)
      :ok
      iex> SnakeBridge.getattr!(ns, "b")
      2
  """
  @spec setattr(Object.t(), SnakeBridge.Types.name(), term(), [call_option()]) ::
          :ok | {:error, SnakeBridge.PythonError.t() | SnakeBridge.Error.t()}
  def setattr(object, name, value, opts \\ []) do
    object = Args.object!(object)
    args = [object, Args.name!(name, :attribute), value]

    case call("snakebridge_worker.dispatch", "set_attribute", args, object_opts(object, opts)) do
      {:ok, nil} -> :ok
      {:error, _} = error -> error
    end
  end

  @doc """
  Like `setattr/4`, but raises on failure.

  ## Examples

      iex> {:ok, ns} = SnakeBridge.call("types", "SimpleNamespace")
      iex> SnakeBridge.setattr!(ns, "answer", 42)
      :ok
  """
  @spec setattr!(Object.t(), SnakeBridge.Types.name(), term(), [call_option()]) :: :ok
  def setattr!(object, name, value, opts \\ []) do
    case setattr(object, name, value, opts) do
      :ok -> :ok
      {:error, error} -> raise error
    end
  end

  @doc """
  Lets go of a Python object now, instead of when the BEAM garbage collects
  the last reference to `object`. Later uses of it return
  `{:error, %SnakeBridge.Error{reason: :stale_handle}}`. Releasing twice is
  harmless. Returns `:ok`; raises `ArgumentError` when `object` is not a
  `SnakeBridge.Object` made by SnakeBridge.

  ## Examples

      iex> {:ok, obj} = SnakeBridge.call("builtins", "object")
      iex> SnakeBridge.release(obj)
      :ok
      iex> {:error, %SnakeBridge.Error{reason: :stale_handle}} = SnakeBridge.call("builtins", "id", [obj])
  """
  @spec release(Object.t()) :: :ok
  def release(object) do
    %Object{ref: ref} = object = Args.object!(object)

    if SnakeBridge.Cluster.remote_object?(object) do
      SnakeBridge.Cluster.release(object)
    else
      _ok_or_already_released = Args.made_object!(object, fn -> NIF.release(ref) end)
      :ok
    end
  end

  @doc """
  Iterates `module.function(*args, **kwargs)`'s result in Python (a
  generator, an async generator, or any iterable) and returns a lazy
  `Stream` of its items.

  Nothing runs until the stream is enumerated. The items are produced in
  the worker and sent as they come, at most `:window` ahead of the consumer:
  a slow consumer pauses the generator instead of letting items pile up on
  either side. Halting early (`Enum.take/2`, `Stream.take_while/2`...)
  closes the generator in Python, so its `finally` blocks run. An exception
  raised in Python while iterating is raised to the consumer, after the
  items produced before it. The stream is enumerated by one process at a
  time, and each enumeration starts the call again.

  `module` may be a `SnakeBridge.Object`, to iterate what one of its methods
  returns (or, with `function` `nil`, what calling it returns);
  `stream(object)` and `stream(object, opts)` iterate the object itself.

  ## Options

    * `:kwargs`, `:pool`, `:output`, `:worker` — as for `call/4`.
    * `:window` — items in flight between the worker and the consumer,
      `1..4_294_967_295`. Default #{@default_window}.
    * `:timeout` — milliseconds to wait for each next item
      (`0..4_294_967_295`), or `:infinity`. Default `5_000`. On timeout the
      stream is closed and `SnakeBridge.Error` (reason `:timeout`) raised.

  The arguments and options are checked when `stream/4` is called, not when
  the stream is enumerated: a bad one raises `ArgumentError` at once.

  ## Examples

      iex> SnakeBridge.stream("builtins", "range", [5]) |> Enum.to_list()
      [0, 1, 2, 3, 4]

      iex> SnakeBridge.stream("itertools", "count", [10]) |> Enum.take(3)
      [10, 11, 12]
  """
  @spec stream(SnakeBridge.Types.target(), SnakeBridge.Types.name() | nil, list(), keyword()) ::
          Enumerable.t()
  def stream(module, function, args \\ [], opts \\ [])

  def stream(%Object{} = object, opts, [], []) when is_list(opts) do
    object = Args.object!(object)
    opts = Args.opts!(opts, [:window, :timeout])
    stream("builtins", "iter", [object], [pool: object.pool] ++ opts)
  end

  def stream(module, function, args, opts) do
    opts =
      Args.opts!(opts, [
        :kwargs,
        :pool,
        :output,
        :worker,
        window: @default_window,
        timeout: @default_timeout
      ])

    {stream_opts, call_opts} = Keyword.split(opts, [:window, :timeout])
    window = Args.window!(stream_opts[:window])
    timeout = Args.timeout!(stream_opts[:timeout])
    # Checked now rather than when the stream is first enumerated.
    request = Native.request!(module, function, args, call_opts, window)
    SnakeBridge.Stream.new(fn -> Native.submit(request, :infinity) end, window, timeout)
  end

  @doc """
  Iterates a Python object itself (`iter(object)`) as a lazy `Stream`; see
  `stream/4`. `stream(object, opts)` takes `:window` and `:timeout`, as
  `stream/4` does. `SnakeBridge.Object` implements `Enumerable` with this,
  so `Enum` functions take objects directly.

  ## Examples

      iex> {:ok, letters} = SnakeBridge.call("builtins", "list", ["abc"], as: :handle)
      iex> SnakeBridge.stream(letters) |> Enum.to_list()
      ["a", "b", "c"]
      iex> SnakeBridge.stream(letters, window: 1, timeout: 1_000) |> Enum.take(2)
      ["a", "b"]
  """
  @spec stream(Object.t()) :: Enumerable.t()
  def stream(object), do: stream(Args.object!(object), [], [], [])

  @doc """
  Runs Python source `code` in a worker and returns the value of its last
  statement, if that is an expression (else `nil`).

  The second argument says where the code runs:

    * a map: a fresh namespace holding these names (keys are strings or
      atoms; values are converted as arguments are, objects included).
      Nothing is kept after the call.
    * a namespace made by `namespace/1`: the code runs in it, so what it
      assigns, imports and defines (functions, classes, dataclasses) is
      there for the next `eval/3` in it, in the namespace's worker. The
      `:globals` option sets names in it first.

  Either way the code runs in a real module, so classes defined in it work
  with `dataclasses` and `pickle`. Top-level `await` is allowed. A
  `SyntaxError` or any exception comes back as
  `{:error, %SnakeBridge.PythonError{}}`. Raises `ArgumentError` when
  `code` is not a string, the second argument is neither a map with string
  or atom keys nor a `SnakeBridge.Object`, or an option is invalid.

  ## Options

  `:timeout`, `:pool`, `:as`, `:output` and `:worker`, as for `call/4`
  (`:pool` and `:worker` only with a map: a namespace runs in its own
  worker); with a namespace, `:globals`, a map of names to set in it before
  the code runs.

  ## Examples

      iex> SnakeBridge.eval("x * 2", %{"x" => 21})
      {:ok, 42}

      iex> SnakeBridge.eval(\"""
      ...> import math
      ...> r = 2
      ...> round(math.pi * r ** 2, 2)
      ...> \""")
      {:ok, 12.57}

      iex> {:ok, ns} = SnakeBridge.namespace()
      iex> SnakeBridge.eval("from dataclasses import dataclass\\n@dataclass\\nclass P:\\n    x: int", ns)
      {:ok, nil}
      iex> SnakeBridge.eval("P(x).x + 1", ns, globals: %{x: 41})
      {:ok, 42}
  """
  @spec eval(String.t(), %{optional(String.t() | atom()) => term()} | Object.t(), keyword()) ::
          SnakeBridge.Types.result()
  def eval(code, globals_or_namespace \\ %{}, opts \\ [])

  def eval(code, %Object{} = namespace, opts) do
    namespace = Args.object!(namespace)
    opts = Args.opts!(opts, [:as, globals: %{}, timeout: @default_timeout])
    {globals, opts} = Keyword.pop!(opts, :globals)
    args = [code!(code), Args.globals!(globals), namespace]
    call("snakebridge_worker.evaluate", "evaluate", args, Keyword.put(opts, :pool, namespace.pool))
  end

  def eval(code, globals, opts) do
    code = code!(code)
    globals = Args.globals!(globals)
    opts = Args.opts!(opts, [:pool, :as, :output, :worker, timeout: @default_timeout])
    call("snakebridge_worker.evaluate", "evaluate", [code, globals], opts)
  end

  @doc """
  Like `eval/3`, but returns the value itself and raises on failure.

  ## Examples

      iex> SnakeBridge.eval!("sum(range(10))")
      45
  """
  @spec eval!(String.t(), map() | Object.t(), keyword()) :: term()
  def eval!(code, globals_or_namespace \\ %{}, opts \\ []),
    do: unwrap!(eval(code, globals_or_namespace, opts))

  @doc """
  Makes a namespace for `eval/3`: a Python module, empty but for
  `__builtins__`, that lives in one worker for as long as the returned
  `SnakeBridge.Object` is referenced (like any object).

  It is a real module, registered in `sys.modules` under a name unique in
  its worker (`snakebridge_ns_<n>`, its `__name__`), so classes defined in
  it can be pickled and `dataclasses` works. Read and write its names with
  `getattr/3` and `setattr/4`, or call its functions with `method/4`.

  ## Options

  `:pool` and `:timeout`, as for `call/4`.

  ## Examples

      iex> {:ok, ns} = SnakeBridge.namespace()
      iex> SnakeBridge.eval!("import math\\ndef area(r):\\n    return round(math.pi * r * r, 2)", ns)
      nil
      iex> SnakeBridge.method!(ns, "area", [2])
      12.57
      iex> SnakeBridge.setattr!(ns, "r", 3)
      :ok
      iex> SnakeBridge.eval!("area(r)", ns)
      28.27
  """
  @spec namespace([call_option()]) :: {:ok, Object.t()} | {:error, SnakeBridge.Error.t()}
  def namespace(opts \\ []) do
    opts = Args.opts!(opts, [:pool, timeout: @default_timeout])
    call("snakebridge_worker.namespaces", "new", [], [as: :handle] ++ opts)
  end

  @doc """
  Like `namespace/1`, but returns the namespace itself and raises on failure.
  """
  @spec namespace!([call_option()]) :: Object.t()
  def namespace!(opts \\ []), do: unwrap!(namespace(opts))

  @doc """
  Waits for the reply to a call made with `SnakeBridge.Native.call_async/4`
  and returns it: `{:ok, value}` or `{:error, error}`.

  Must be called from the process that made the call (the reply goes to its
  mailbox). For a call made with `output: :caller`, the lines it printed are
  written to the group leader first, in order. After `timeout` milliseconds the call is cancelled and
  `{:error, %SnakeBridge.Error{reason: :timeout}}` returned — unless the reply
  raced the timeout, in which case the reply is returned. Either way no
  message for `ref` is left behind.

  Raises `ArgumentError`, before waiting, when `ref` is not a reference or
  `timeout` is neither `:infinity` nor in `0..4_294_967_295`.

  ## Examples

      {:ok, ref} = SnakeBridge.Native.call_async("math", "factorial", [20])
      SnakeBridge.await(ref)
      #=> {:ok, 2432902008176640000}
  """
  @spec await(reference(), SnakeBridge.Types.timeout_ms()) :: SnakeBridge.Types.result()
  def await(ref, timeout \\ @default_timeout) do
    Args.ref!(ref, "the call's ref")
    Args.timeout!(timeout)
    receive_reply(ref, timeout, timeout, nil)
  end

  # For SnakeBridge.Telemetry, whose calls ask their worker for timing: the
  # reply of such a call comes as {:timed, result, timing}.
  @doc false
  def await_reply(ref, timeout), do: receive_reply(ref, timeout, timeout, nil)

  # Output of the call (`output: :caller`) comes ahead of its reply and is
  # written as it comes. `wait` is what is left of `timeout`, counted from
  # the first line of output (`deadline`, nil before: a call that prints
  # nothing reads no clock).
  defp receive_reply(ref, timeout, wait, deadline) do
    receive do
      {:snakebridge, ^ref, result} ->
        result

      {:snakebridge, ^ref, result, timing} ->
        {:timed, result, timing}

      {:snakebridge_output, ^ref, _device, line} ->
        Output.write(line)
        deadline = deadline || Output.deadline(wait)
        receive_reply(ref, timeout, Output.left(deadline), deadline)
    after
      wait -> give_up(ref, timeout)
    end
  end

  defp give_up(ref, timeout) do
    # :timeout, not a plain cancel: the pool's circuit breaker counts it.
    result =
      case cancel_call(ref, :timeout) do
        :cancelled ->
          timeout_error(timeout)

        :replied ->
          receive do
            {:snakebridge, ^ref, result} -> result
            {:snakebridge, ^ref, result, timing} -> {:timed, result, timing}
          after
            @reply_grace -> timeout_error(timeout)
          end

        :unknown ->
          # Not (or no longer) known to the runtime: if it answered at all,
          # the answer is already here.
          receive do
            {:snakebridge, ^ref, result} -> result
            {:snakebridge, ^ref, result, timing} -> {:timed, result, timing}
          after
            0 -> timeout_error(timeout)
          end
      end

    Output.flush(ref)
    result
  end

  @doc """
  Cancels a call made with `SnakeBridge.Native.call_async/4`.

  After it returns, no reply for `ref` is in, or will arrive in, the mailbox:
  a call still queued never runs; a reply that was already delivered is
  removed from the mailbox. Call it from the process that made the call, since
  that is the mailbox it cleans. Cancelling an unknown or finished call is a
  no-op. Returns `:ok`; raises `ArgumentError` when `ref` is not a reference.

  ## Examples

      {:ok, ref} = SnakeBridge.Native.call_async("time", "sleep", [10])
      :ok = SnakeBridge.cancel(ref)
  """
  @spec cancel(reference()) :: :ok
  def cancel(ref) do
    case cancel_call(Args.ref!(ref, "the call's ref"), :cancel) do
      :replied ->
        receive do
          {:snakebridge, ^ref, _} -> :ok
        after
          @reply_grace -> :ok
        end

      _cancelled_or_unknown ->
        receive do
          {:snakebridge, ^ref, _} -> :ok
        after
          0 -> :ok
        end
    end

    # What the call printed before it was cancelled (output: :caller).
    Output.flush(ref)
  end

  @doc """
  Wraps a binary so that Python receives it as `bytes`, even when it is valid
  UTF-8 (which would otherwise become `str`). Raises `ArgumentError` when
  `data` is not a binary (iodata included: use `IO.iodata_to_binary/1`).

  ## Examples

      iex> SnakeBridge.call!("builtins", "repr", [SnakeBridge.bytes("abc")])
      "b'abc'"

      iex> SnakeBridge.call!("builtins", "repr", ["abc"])
      "'abc'"
  """
  @spec bytes(binary()) :: SnakeBridge.Bytes.t()
  def bytes(data) when is_binary(data), do: %SnakeBridge.Bytes{data: data}

  def bytes(data) do
    raise ArgumentError, "expected data to be a binary, got: #{inspect(data)}"
  end

  @doc """
  Returns the state of a pool: a map with `:queue_length` (calls waiting for
  a worker), `:max_queue`, `:size`, the pool's totals `:calls`, `:errors` and
  `:restarts`, and `:workers`, one map per worker slot with `:os_pid` (`nil`
  while none runs), `:state` (`:starting`, `:ready`, `:restarting`,
  `:unavailable` or `:stopped`), `:in_flight`, `:cancelling` (cancelled
  calls the worker is still interrupting), `:calls`, `:errors`,
  `:restarts`, `:objects` (the `SnakeBridge.Object`s Elixir holds on objects
  in that worker), `:rss` (bytes, of the Python process) and
  `:shared_memory` (bytes of the worker's shared memory in use: large
  results Elixir still refers to, large calls not yet read).

  With `cluster: true`, returns instead the cluster view of a pool started
  with the `:cluster` option (see `SnakeBridge.Pool`), from this node or any
  node connected to it: for each node that runs the pool, the load it last
  published, a map with `:size`, `:queue_length`, `:in_flight` (calls
  written to its workers and not answered) and `:age_ms` (how long ago it
  was published). Counts are `nil` for a node that joined and has not
  published yet. This is `SnakeBridge.Cluster.stats/1`, except that a pool
  no node runs raises.

  Raises `SnakeBridge.Error` (reason `:pool_not_found`) when no such pool runs
  (on this node, or with `cluster: true`, clustered on any node), and
  `ArgumentError` when `pool` is not an atom or an option is unknown or not
  a boolean.

  ## Options

    * `:cluster` - `true` for the cluster view. Defaults to `false`.

  ## Examples

      SnakeBridge.stats()
      #=> %{queue_length: 0, size: 2, calls: 10, workers: [%{os_pid: 4242, state: :ready, in_flight: 0, ...}, ...], ...}

      SnakeBridge.stats(:ml, cluster: true)
      #=> %{:"a@host" => %{size: 8, queue_length: 0, in_flight: 3, age_ms: 40}, :"b@host" => %{...}}
  """
  @spec stats(SnakeBridge.Types.pool(), [{:cluster, boolean()}]) ::
          %{
            required(:queue_length) => non_neg_integer(),
            required(:workers) => [map()],
            optional(atom()) => term()
          }
          | %{optional(node()) => map()}
  def stats(pool \\ :default, opts \\ []) do
    pool = Args.pool!(pool)

    case Args.opts!(opts, cluster: false)[:cluster] do
      false -> local_stats(pool)
      true -> cluster_stats(pool)
      other -> raise ArgumentError, "expected :cluster to be a boolean, got: #{inspect(other)}"
    end
  end

  defp local_stats(pool) do
    case NIF.stats(pool) do
      {:ok, stats} -> stats
      {:error, error} -> raise error
    end
  end

  defp cluster_stats(pool) do
    view = SnakeBridge.Cluster.stats(pool)

    if view == %{} do
      raise Error,
        reason: :pool_not_found,
        message:
          "no node of the cluster runs a pool named #{inspect(pool)} with the :cluster option",
        details: %{pool: pool}
    end

    view
  end

  # A ref the runtime of this node does not know may be a remote call's.
  defp cancel_call(ref, why) do
    outcome = if why == :timeout, do: NIF.cancel(ref, :timeout), else: NIF.cancel(ref)

    with :unknown <- outcome do
      case SnakeBridge.Cluster.cancel(ref, why) do
        # The Client passes a reply on before it answers the cancel.
        :cancelled -> :cancelled
        :unknown -> :unknown
      end
    end
  end

  defp code!(code) when is_binary(code), do: code

  defp code!(code) do
    raise ArgumentError, "expected code to be a string, got: #{inspect(code)}"
  end

  defp object_opts(%Object{pool: pool}, opts) do
    opts = Args.opts!(opts, [:as, :output, timeout: @default_timeout])
    Keyword.put(opts, :pool, pool)
  end

  defp unwrap!({:ok, value}), do: value
  defp unwrap!({:error, error}), do: raise(error)

  defp timeout_error(timeout) do
    {:error,
     %Error{
       reason: :timeout,
       message: "Python call did not answer within #{timeout} ms and was cancelled",
       details: %{timeout: timeout}
     }}
  end
end
