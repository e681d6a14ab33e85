defmodule SnakeBridge.Args do
  # Argument checks shared by the public modules. Each raises ArgumentError
  # naming the argument and what it must be, before anything is sent: a bad
  # argument never reaches the NIF, where it would be a bare badarg, nor
  # `receive ... after`, which raises only once a call is already on its way.
  @moduledoc false

  alias SnakeBridge.Object

  # The largest `after` value `receive` accepts (milliseconds, 2^32 - 1).
  @max_timeout 0xFFFF_FFFF

  # Stream windows are counted in 32 bits: more items in flight than that
  # is no backpressure at all.
  @max_window 0xFFFF_FFFF

  defguard is_timeout(timeout)
           when timeout == :infinity or
                  (is_integer(timeout) and timeout >= 0 and timeout <= @max_timeout)

  def timeout!(timeout) when is_timeout(timeout), do: timeout

  def timeout!(timeout) do
    raise ArgumentError,
          "expected :timeout to be a non-negative integer below 2^32 or :infinity, got: " <>
            inspect(timeout)
  end

  def window!(window) when is_integer(window) and window > 0 and window <= @max_window,
    do: window

  def window!(window) do
    raise ArgumentError,
          "expected :window to be a positive integer below 2^32, got: #{inspect(window)}"
  end

  # Checks that `opts` is a keyword list, then validates it against `allowed`.
  def opts!(opts, allowed) do
    unless keyword?(opts) do
      raise ArgumentError, "expected opts to be a keyword list, got: #{inspect(opts)}"
    end

    Keyword.validate!(opts, allowed)
  end

  def pool!(pool) when is_atom(pool), do: pool

  def pool!(pool) do
    raise ArgumentError, "expected the pool name to be an atom, got: #{inspect(pool)}"
  end

  def ref!(ref, _what) when is_reference(ref), do: ref

  def ref!(ref, what) do
    raise ArgumentError, "expected #{what} to be a reference, got: #{inspect(ref)}"
  end

  def object!(%Object{ref: ref, pool: pool} = object) when is_reference(ref) and is_atom(pool),
    do: object

  def object!(object) do
    raise ArgumentError, "expected a SnakeBridge.Object, got: #{inspect(object)}"
  end

  # Runs a NIF on `object`'s ref: the NIF raises a bare badarg for a struct
  # whose ref it did not make.
  def made_object!(object, fun) do
    fun.()
  rescue
    ArgumentError ->
      reraise ArgumentError,
              "expected a SnakeBridge.Object made by SnakeBridge, got: #{inspect(object)}",
              __STACKTRACE__
  end

  # A module, function, method or attribute name, as a string.
  def name!(name, _what) when is_binary(name), do: name

  def name!(name, _what) when is_atom(name) and name not in [nil, true, false],
    do: Atom.to_string(name)

  def name!(name, what) do
    raise ArgumentError,
          "expected the #{what} name to be a string or an atom, got: #{inspect(name)}"
  end

  def list!(list, what) do
    if proper_list?(list) do
      list
    else
      raise ArgumentError, "expected #{what} to be a list, got: #{inspect(list)}"
    end
  end

  def kwargs!(kwargs) when is_map(kwargs) do
    Enum.each(kwargs, fn
      {key, _} when is_atom(key) or is_binary(key) ->
        :ok

      {key, _} ->
        raise ArgumentError,
              "expected the :kwargs names to be atoms or strings, got: #{inspect(key)}"
    end)

    kwargs
  end

  def kwargs!(kwargs) do
    if keyword?(kwargs) do
      kwargs
    else
      raise ArgumentError,
            "expected :kwargs to be a keyword list or a map, got: #{inspect(kwargs)}"
    end
  end

  # Any Python identifier: atoms that convert to other values (nil, the
  # booleans, the float atoms) would not become names.
  @not_names [nil, true, false, :nan, :infinity, :neg_infinity]

  def globals!(globals) when is_map(globals) do
    Enum.each(globals, fn
      {key, _} when is_binary(key) or (is_atom(key) and key not in @not_names) ->
        :ok

      {key, _} ->
        raise ArgumentError,
              "expected the globals' keys to be strings or atoms, got: #{inspect(key)}"
    end)

    globals
  end

  def globals!(globals) do
    raise ArgumentError, "expected globals to be a map, got: #{inspect(globals)}"
  end

  defp proper_list?([]), do: true
  defp proper_list?([_ | tail]), do: proper_list?(tail)
  defp proper_list?(_), do: false

  defp keyword?([]), do: true
  defp keyword?([{key, _} | tail]) when is_atom(key), do: keyword?(tail)
  defp keyword?(_), do: false

  # Keyword.validate!/2 for the keyword list a pool option takes
  # (`:cluster`, `:init`, ...): the error names that option.
  @doc false
  def sub_opts!(opts, defaults, option) do
    Keyword.validate!(opts, defaults)
  rescue
    error in ArgumentError ->
      reraise ArgumentError,
              "invalid #{inspect(option)} option: " <> Exception.message(error),
              __STACKTRACE__
  end
end
