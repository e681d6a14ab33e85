defmodule SnakeBridgeBench.Msgpack do
  @moduledoc """
  A plain-Elixir MessagePack codec for the benchmark baseline: what users get
  from pure-Elixir msgpack libraries. Encoding builds iodata; decoding is binary
  pattern matching. Covers nil, booleans, integers (64-bit), floats, binaries
  (`str` when `String.valid?/1`, else `bin`), atoms (as `str`), lists and maps,
  which is all the benchmark payloads need. Decoding also accepts float32 and
  returns ext values as `{:ext, type, data}`.
  """

  # ---- encoding -------------------------------------------------------------

  @doc "Encodes `term` as iodata. Raises `ArgumentError` on unsupported terms."
  @spec encode(term()) :: iodata()
  def encode(nil), do: <<0xC0>>
  def encode(false), do: <<0xC2>>
  def encode(true), do: <<0xC3>>

  def encode(int) when is_integer(int) and int >= 0 do
    cond do
      int < 0x80 -> <<int>>
      int < 0x100 -> <<0xCC, int>>
      int < 0x10000 -> <<0xCD, int::16>>
      int < 0x100000000 -> <<0xCE, int::32>>
      int < 0x10000000000000000 -> <<0xCF, int::64>>
      true -> raise ArgumentError, "integer too large for msgpack: #{int}"
    end
  end

  def encode(int) when is_integer(int) do
    cond do
      int >= -32 -> <<int::signed-8>>
      int >= -0x80 -> <<0xD0, int::signed-8>>
      int >= -0x8000 -> <<0xD1, int::signed-16>>
      int >= -0x80000000 -> <<0xD2, int::signed-32>>
      int >= -0x8000000000000000 -> <<0xD3, int::signed-64>>
      true -> raise ArgumentError, "integer too small for msgpack: #{int}"
    end
  end

  def encode(float) when is_float(float), do: <<0xCB, float::float-64>>

  def encode(bin) when is_binary(bin) do
    if String.valid?(bin),
      do: [str_header(byte_size(bin)), bin],
      else: [bin_header(byte_size(bin)), bin]
  end

  def encode(atom) when is_atom(atom) do
    bin = Atom.to_string(atom)
    [str_header(byte_size(bin)), bin]
  end

  def encode(list) when is_list(list) do
    [array_header(length(list)) | Enum.map(list, &encode/1)]
  end

  def encode(map) when is_map(map) and not is_struct(map) do
    [
      map_header(map_size(map))
      | :maps.fold(fn k, v, acc -> [encode(k), encode(v) | acc] end, [], map)
    ]
  end

  def encode(other), do: raise(ArgumentError, "cannot encode as msgpack: #{inspect(other)}")

  defp str_header(n) when n < 32, do: <<0b101::3, n::5>>
  defp str_header(n) when n < 0x100, do: <<0xD9, n>>
  defp str_header(n) when n < 0x10000, do: <<0xDA, n::16>>
  defp str_header(n), do: <<0xDB, n::32>>

  defp bin_header(n) when n < 0x100, do: <<0xC4, n>>
  defp bin_header(n) when n < 0x10000, do: <<0xC5, n::16>>
  defp bin_header(n), do: <<0xC6, n::32>>

  defp array_header(n) when n < 16, do: <<0b1001::4, n::4>>
  defp array_header(n) when n < 0x10000, do: <<0xDC, n::16>>
  defp array_header(n), do: <<0xDD, n::32>>

  defp map_header(n) when n < 16, do: <<0b1000::4, n::4>>
  defp map_header(n) when n < 0x10000, do: <<0xDE, n::16>>
  defp map_header(n), do: <<0xDF, n::32>>

  # ---- decoding -------------------------------------------------------------

  @doc "Decodes one complete msgpack value; trailing bytes are an error."
  @spec decode(binary()) :: {:ok, term()} | {:error, term()}
  def decode(bin) when is_binary(bin) do
    case value(bin) do
      {term, <<>>} -> {:ok, term}
      {_term, rest} -> {:error, {:trailing_bytes, byte_size(rest)}}
    end
  rescue
    e in [FunctionClauseError, MatchError, CaseClauseError] ->
      {:error, {:invalid, Exception.message(e)}}
  end

  @doc "Like `decode/1` but raises on invalid input."
  @spec decode!(binary()) :: term()
  def decode!(bin) do
    case decode(bin) do
      {:ok, term} -> term
      {:error, reason} -> raise ArgumentError, "invalid msgpack: #{inspect(reason)}"
    end
  end

  # positive fixint, fixmap, fixarray, fixstr, negative fixint
  defp value(<<0::1, n::7, rest::binary>>), do: {n, rest}
  defp value(<<0b1000::4, n::4, rest::binary>>), do: map(rest, n, [])
  defp value(<<0b1001::4, n::4, rest::binary>>), do: array(rest, n, [])
  defp value(<<0b101::3, n::5, s::binary-size(n), rest::binary>>), do: {s, rest}
  defp value(<<n::signed-8, rest::binary>>) when n >= -32 and n < 0, do: {n, rest}

  defp value(<<0xC0, rest::binary>>), do: {nil, rest}
  defp value(<<0xC2, rest::binary>>), do: {false, rest}
  defp value(<<0xC3, rest::binary>>), do: {true, rest}

  defp value(<<0xC4, n, b::binary-size(n), rest::binary>>), do: {b, rest}
  defp value(<<0xC5, n::16, b::binary-size(n), rest::binary>>), do: {b, rest}
  defp value(<<0xC6, n::32, b::binary-size(n), rest::binary>>), do: {b, rest}

  defp value(<<0xC7, n, t::signed-8, b::binary-size(n), rest::binary>>), do: {{:ext, t, b}, rest}

  defp value(<<0xC8, n::16, t::signed-8, b::binary-size(n), rest::binary>>),
    do: {{:ext, t, b}, rest}

  defp value(<<0xC9, n::32, t::signed-8, b::binary-size(n), rest::binary>>),
    do: {{:ext, t, b}, rest}

  defp value(<<0xCA, f::float-32, rest::binary>>), do: {f, rest}
  defp value(<<0xCB, f::float-64, rest::binary>>), do: {f, rest}

  defp value(<<0xCC, n, rest::binary>>), do: {n, rest}
  defp value(<<0xCD, n::16, rest::binary>>), do: {n, rest}
  defp value(<<0xCE, n::32, rest::binary>>), do: {n, rest}
  defp value(<<0xCF, n::64, rest::binary>>), do: {n, rest}
  defp value(<<0xD0, n::signed-8, rest::binary>>), do: {n, rest}
  defp value(<<0xD1, n::signed-16, rest::binary>>), do: {n, rest}
  defp value(<<0xD2, n::signed-32, rest::binary>>), do: {n, rest}
  defp value(<<0xD3, n::signed-64, rest::binary>>), do: {n, rest}

  defp value(<<0xD4, t::signed-8, b::binary-size(1), rest::binary>>), do: {{:ext, t, b}, rest}
  defp value(<<0xD5, t::signed-8, b::binary-size(2), rest::binary>>), do: {{:ext, t, b}, rest}
  defp value(<<0xD6, t::signed-8, b::binary-size(4), rest::binary>>), do: {{:ext, t, b}, rest}
  defp value(<<0xD7, t::signed-8, b::binary-size(8), rest::binary>>), do: {{:ext, t, b}, rest}
  defp value(<<0xD8, t::signed-8, b::binary-size(16), rest::binary>>), do: {{:ext, t, b}, rest}

  defp value(<<0xD9, n, s::binary-size(n), rest::binary>>), do: {s, rest}
  defp value(<<0xDA, n::16, s::binary-size(n), rest::binary>>), do: {s, rest}
  defp value(<<0xDB, n::32, s::binary-size(n), rest::binary>>), do: {s, rest}

  defp value(<<0xDC, n::16, rest::binary>>), do: array(rest, n, [])
  defp value(<<0xDD, n::32, rest::binary>>), do: array(rest, n, [])
  defp value(<<0xDE, n::16, rest::binary>>), do: map(rest, n, [])
  defp value(<<0xDF, n::32, rest::binary>>), do: map(rest, n, [])

  defp array(rest, 0, acc), do: {:lists.reverse(acc), rest}

  defp array(bin, n, acc) do
    {v, rest} = value(bin)
    array(rest, n - 1, [v | acc])
  end

  defp map(rest, 0, acc), do: {:maps.from_list(acc), rest}

  defp map(bin, n, acc) do
    {k, rest} = value(bin)
    {v, rest} = value(rest)
    map(rest, n - 1, [{k, v} | acc])
  end
end
