defmodule :telemetry do
  # A stand-in for the `:telemetry` library (a Hex package, out of reach
  # here), honouring the part of its API SnakeBridge and the tests use:
  # handlers are attached by id to exact event names, `execute/3` calls each
  # with (event, measurements, metadata, config) in the calling process, and
  # `list_handlers/1` lists those whose event starts with a prefix. A handler
  # that raises is detached, as the library does.
  @moduledoc false

  @key {__MODULE__, :handlers}

  def attach(id, event, function, config), do: attach_many(id, [event], function, config)

  def attach_many(id, events, function, config) when is_function(function, 4) do
    :global.trans({@key, self()}, fn ->
      handlers = :persistent_term.get(@key, [])

      if Enum.any?(handlers, &(&1.id == id)) do
        {:error, :already_exists}
      else
        new =
          for event <- events, do: %{id: id, event_name: event, function: function, config: config}

        :persistent_term.put(@key, handlers ++ new)
        :ok
      end
    end)
  end

  def detach(id) do
    :global.trans({@key, self()}, fn ->
      handlers = :persistent_term.get(@key, [])
      {gone, kept} = Enum.split_with(handlers, &(&1.id == id))
      :persistent_term.put(@key, kept)
      if gone == [], do: {:error, :not_found}, else: :ok
    end)
  end

  def list_handlers(prefix) do
    Enum.filter(:persistent_term.get(@key, []), &List.starts_with?(&1.event_name, prefix))
  end

  def execute(event, measurements, metadata) when is_map(measurements) and is_map(metadata) do
    for %{event_name: ^event} = handler <- :persistent_term.get(@key, []) do
      try do
        handler.function.(event, measurements, metadata, handler.config)
      catch
        _kind, _reason -> detach(handler.id)
      end
    end

    :ok
  end
end
