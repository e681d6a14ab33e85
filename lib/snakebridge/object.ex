defmodule SnakeBridge.Object do
  @moduledoc """
  A Python object that stays in its worker: what a call returns when the
  result has no Elixir equivalent (a model, a file, a class instance), or
  when asked for with `as: :handle`.

  Use it with `SnakeBridge.method/4`, `SnakeBridge.getattr/3`,
  `SnakeBridge.setattr/4` and `SnakeBridge.call/3` (when it is callable), or
  pass it as an argument, anywhere inside lists, maps and tuples, to other
  calls: those run in the worker that holds the object.

  The Python object lives as long as any Elixir process still refers to
  this struct: when the BEAM garbage collects the last reference, the worker
  drops it. `SnakeBridge.release/1` lets go of it at once.

  If the worker that holds the object exits (a crash, a kill, recycling by
  `:max_calls` or `:max_memory_mb`), the object is gone with it, and calls
  using it return `{:error, %SnakeBridge.Error{reason: :stale_handle}}`,
  never a call on another object.

  Fields: `type` is the Python type's name (`"datetime.date"`), `repr` is
  `repr(obj)` when it was returned (cut at 200 characters), `pool` is the
  pool of its worker. `ref` is internal.

  ## Protocols

    * `Enumerable`: `Enum` and `Stream` functions iterate the object in
      Python, lazily, as `SnakeBridge.stream/1` does (`Enum.to_list(obj)`,
      `Enum.take(generator, 3)`). Each enumeration calls `iter(obj)` again:
      a list starts over, but an iterator (a generator) goes on where the
      last enumeration left it, and one that was halted early may have
      been advanced by up to a window (64) of items that were never
      consumed. An object that is not iterable raises
      `SnakeBridge.PythonError` (`TypeError`).
    * `String.Chars`: `to_string(obj)` and interpolation give Python's
      `str(obj)`, asked of the worker at that moment; an error raises.
    * `Inspect` shows the `repr` taken when the object was returned, and
      calls nothing. `inspect/1` runs where a call must not: in crash
      reports and logs (possibly after the worker is gone), in other
      processes, and inside IEx and Livebook whenever a value is printed.
      A live repr there could block for a whole timeout, raise, or run user
      code with side effects. For the current repr, call
      `SnakeBridge.call!("builtins", "repr", [obj], pool: obj.pool)`.

      iex> {:ok, date} = SnakeBridge.call("datetime", "date", [2024, 2, 29], as: :handle)
      iex> date.type
      "datetime.date"
      iex> SnakeBridge.method!(date, "isoformat")
      "2024-02-29"
  """

  @enforce_keys [:type, :repr, :pool, :ref]
  defstruct [:type, :repr, :pool, :ref]

  @type t :: %__MODULE__{
          type: String.t(),
          repr: String.t(),
          pool: SnakeBridge.Types.pool(),
          ref: reference()
        }

  @doc """
  The OS pid of the worker holding the object, or `nil` when that worker
  is gone or the object was released. Raises `ArgumentError` when `object`
  is not a `SnakeBridge.Object` made by SnakeBridge.

      {:ok, obj} = SnakeBridge.call("builtins", "object")
      SnakeBridge.Object.os_pid(obj)
      #=> 48213
  """
  @spec os_pid(t()) :: pos_integer() | nil
  def os_pid(object) do
    %__MODULE__{ref: ref} = object = SnakeBridge.Args.object!(object)

    if SnakeBridge.Cluster.remote_object?(object) do
      SnakeBridge.Cluster.os_pid(object)
    else
      SnakeBridge.Args.made_object!(object, fn -> SnakeBridge.NIF.object_os_pid(ref) end)
    end
  end

  defimpl Inspect do
    def inspect(%SnakeBridge.Object{repr: repr}, _opts), do: "#SnakeBridge.Object<#{repr}>"
  end

  defimpl Enumerable do
    # Python iterables have no cheap length or membership test that would
    # not consume an iterator: Enum falls back to reduce/3.
    def count(_object), do: {:error, __MODULE__}
    def member?(_object, _element), do: {:error, __MODULE__}
    def slice(_object), do: {:error, __MODULE__}

    def reduce(object, acc, fun), do: Enumerable.reduce(SnakeBridge.stream(object), acc, fun)
  end

  defimpl String.Chars do
    def to_string(%SnakeBridge.Object{pool: pool} = object),
      do: SnakeBridge.call!("builtins", "str", [object], pool: pool)
  end
end
