defmodule SnakeBridge.WorkerInit do
  @moduledoc false
  # A pool's `:init` option (see SnakeBridge.Pool): what each worker runs
  # before it says hello, given to it as command-line arguments.

  @defaults [imports: [], code: nil, timeout: 30_000]
  # One command-line argument may hold at most 128 KiB.
  @max_code 100_000

  @doc "Validates `:init`; returns the worker's extra arguments and its start timeout in ms."
  @spec options!(term()) :: {[String.t()], pos_integer()}
  def options!(opts) when is_list(opts) do
    opts = SnakeBridge.Args.sub_opts!(opts, @defaults, :init)

    imports =
      case opts[:imports] do
        list when is_list(list) ->
          Enum.map(list, &init_import!/1)

        other ->
          raise ArgumentError,
                "expected :init's :imports to be a list of module names, got: #{inspect(other)}"
      end

    code =
      case opts[:code] do
        nil ->
          []

        code when is_binary(code) and byte_size(code) <= @max_code ->
          if String.contains?(code, <<0>>) do
            raise ArgumentError, "expected :init's :code to contain no NUL byte"
          end

          ["--init=" <> code]

        other ->
          raise ArgumentError,
                "expected :init's :code to be a string of at most #{@max_code} bytes, got: #{inspect(other, limit: 5, printable_limit: 80)}"
      end

    timeout = opts[:timeout]

    unless is_integer(timeout) and timeout > 0 do
      raise ArgumentError,
            "expected :init's :timeout to be a positive integer, got: #{inspect(timeout)}"
    end

    {Enum.map(imports, &("--import=" <> &1)) ++ code, timeout}
  end

  def options!(other) do
    raise ArgumentError,
          "expected :init to be a keyword list of :imports, :code and :timeout, got: #{inspect(other)}"
  end

  defp init_import!(name) when is_atom(name) and name not in [nil, true, false],
    do: init_import!(Atom.to_string(name))

  defp init_import!(name) when is_binary(name) do
    if Regex.match?(~r/\A[\p{L}_][\p{L}\p{N}_]*(\.[\p{L}_][\p{L}\p{N}_]*)*\z/u, name) do
      name
    else
      raise ArgumentError,
            "expected :init's :imports to be module names like \"numpy.linalg\", got: #{inspect(name)}"
    end
  end

  defp init_import!(other) do
    raise ArgumentError,
          "expected :init's :imports to be module names (strings), got: #{inspect(other)}"
  end
end
