defmodule SnakeBridge.Application do
  @moduledoc """
  Starts SnakeBridge's supervisor and, unless disabled, the `:default` pool.

  Configure the default pool with `SnakeBridge.Pool` options, or turn it off:

      config :snakebridge, :default_pool, size: 4, python: ".venv/bin/python"
      config :snakebridge, :default_pool, false

  The pool is always named `:default`.
  """

  use Application

  @impl true
  def start(_type, _args) do
    Supervisor.start_link([SnakeBridge.Cluster.Supervisor | children()],
      strategy: :one_for_one,
      name: SnakeBridge.Supervisor
    )
  end

  defp children do
    case Application.get_env(:snakebridge, :default_pool, []) do
      false -> []
      true -> [{SnakeBridge.Pool, name: :default}]
      opts when is_list(opts) -> [{SnakeBridge.Pool, Keyword.put(opts, :name, :default)}]
    end
  end
end
