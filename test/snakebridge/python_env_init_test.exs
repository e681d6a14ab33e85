defmodule SnakeBridge.PythonEnvInitTest do
  # Replaces the default pool, which other test modules use: not async.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias SnakeBridge.{Error, PythonEnv, Wheels}

  @moduletag :slow
  @moduletag timeout: 300_000

  setup do
    root = Path.join(System.tmp_dir!(), "sb_env_init_#{System.unique_integer([:positive])}")
    wheels = Path.join(root, "wheels")
    Wheels.build!(wheels, "sbnotebook", "0.3", "def greet(name):\n    return f'hello {name}'\n")
    configured = Application.fetch_env(:snakebridge, :default_pool)

    on_exit(fn ->
      case configured do
        {:ok, opts} -> Application.put_env(:snakebridge, :default_pool, opts)
        :error -> Application.delete_env(:snakebridge, :default_pool)
      end

      restart_default_pool()
      File.rm_rf!(root)
    end)

    %{
      env: [find_links: wheels, offline: true, cache_dir: Path.join(root, "cache"), installer: :pip]
    }
  end

  defp restart_default_pool do
    id = {SnakeBridge.Pool, :default}
    _ = Supervisor.terminate_child(SnakeBridge.Supervisor, id)
    _ = Supervisor.delete_child(SnakeBridge.Supervisor, id)
    opts = Application.get_env(:snakebridge, :default_pool, [])

    {:ok, _} =
      Supervisor.start_child(
        SnakeBridge.Supervisor,
        {SnakeBridge.Pool, Keyword.put(opts, :name, :default)}
      )
  end

  test "init/2 restarts the default pool in the environment", %{env: env} do
    assert {:error, %SnakeBridge.PythonError{type: "ModuleNotFoundError"}} =
             SnakeBridge.call("sbnotebook", "greet", ["elixir"])

    log =
      capture_log([level: :info], fn ->
        pyproject_toml = """
        [project]
        name = "notebook"
        version = "0.0.0"
        dependencies = ["sbnotebook==0.3"]
        """

        assert PythonEnv.init([pyproject_toml: pyproject_toml] ++ env, size: 1) == :ok
      end)

    assert log =~ "Successfully installed sbnotebook-0.3"

    assert SnakeBridge.call("sbnotebook", "greet", ["elixir"], timeout: 30_000) ==
             {:ok, "hello elixir"}

    assert %{size: 1} = SnakeBridge.stats()

    assert Application.get_env(:snakebridge, :default_pool)[:python_env][:pyproject_toml] =~
             "sbnotebook==0.3"

    # The contents went to a temporary file, which is gone.
    assert Path.wildcard(Path.join(System.tmp_dir!(), "snakebridge-pyproject-*.toml")) == []
  end

  test "init/2 with a requirement that cannot be installed returns the error and keeps the pool",
       %{env: env} do
    %{workers: workers} = SnakeBridge.stats()
    pids = Enum.map(workers, & &1.os_pid)

    capture_log(fn ->
      assert {:error, %Error{reason: :python_unavailable, message: message}} =
               PythonEnv.init([requirements: ["sbnotebook==9.9"]] ++ env)

      assert message =~ "could not build the Python environment"
      assert message =~ "ERROR: No matching distribution found for sbnotebook==9.9"
    end)

    assert Enum.map(SnakeBridge.stats().workers, & &1.os_pid) == pids
    assert SnakeBridge.call("math", "sqrt", [4.0]) == {:ok, 2.0}
  end

  test "init/2 validates its options before touching the pool" do
    assert_raise ArgumentError,
                 ~r/expected :python_env to have :requirements, a :pyproject or a :pyproject_toml/,
                 fn ->
                   PythonEnv.init([])
                 end

    assert_raise ArgumentError, ~r/expected pool_opts to be a keyword list/, fn ->
      PythonEnv.init([requirements: ["x"]], :bad)
    end

    assert_raise ArgumentError, ~r/expected :size to be a positive integer/, fn ->
      PythonEnv.init([requirements: ["x"]], size: 0)
    end
  end
end
