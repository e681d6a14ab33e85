defmodule SnakeBridge.NIF do
  # The whole NIF surface in one place: stubs only, replaced by the Rust
  # functions of native/snakebridge_nif when the library loads. Use
  # SnakeBridge.Native and SnakeBridge instead of calling these directly.
  @moduledoc false

  @on_load :load_nif

  @doc false
  def load_nif do
    case :code.priv_dir(:snakebridge) do
      {:error, _} ->
        {:error,
         {:load_failed, ~c"the :snakebridge application (and its priv dir) is not in the code path"}}

      priv ->
        # No extension: load_nif/2 appends the platform's own (.so).
        # The MapSet struct's fields other than :map tell the NIF how this
        # Elixir version builds sets.
        :erlang.load_nif(
          :filename.join(priv, ~c"native/libsnakebridge_nif"),
          Map.drop(MapSet.new(), [:__struct__, :map])
        )
    end
  end

  @doc false
  def pool_start(_name, _config), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def pool_stop(_pool), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def submit(_pool, _target, _function, _args, _kwargs, _timeout, _mode, _near),
    do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def submit_dirty(_pool, _target, _function, _args, _kwargs, _timeout, _mode, _near),
    do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def pool_restart(_pool), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def stream_credit(_ref, _n), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def release(_object_ref), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def object_os_pid(_object_ref), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def cancel(_ref), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def cancel(_ref, _why), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def stats(_pool), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def reader_route(_reader, _frame), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def reader_route_dirty(_reader, _frame), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def reader_close(_reader), do: :erlang.nif_error(:nif_not_loaded)
end
