defmodule SnakeBridge.PythonEnvTest do
  # Each test builds real virtualenvs (python -m venv, then pip) from a wheel
  # made in the test, offline. Not async: a build keeps a CPU busy for
  # seconds, which would slow the timed tests of async modules.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Pool, PythonEnv, Wheels}

  @moduletag :slow
  @moduletag timeout: 300_000

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  setup do
    root = Path.join(System.tmp_dir!(), "sb_env_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(root) end)
    wheels = Path.join(root, "wheels")
    Wheels.build!(wheels, "sbwheel", "1.0", "VALUE = 'from the wheel'\n")
    env = [find_links: wheels, offline: true, cache_dir: Path.join(root, "cache"), installer: :pip]
    %{root: root, wheels: wheels, env: env}
  end

  defp start_pool!(name, env_opts, opts \\ []) do
    start_supervised!({Pool, pool_opts(name, [size: 1, python_env: env_opts] ++ opts)}, id: name)
  end

  defp prefix(name),
    do: SnakeBridge.eval!("import sys\nsys.prefix", %{}, pool: name, timeout: 30_000)

  test "a pool runs in an environment installed offline from a wheel; the next start finds it cached",
       %{env: env} do
    name = unique(:env_offline)
    env = [requirements: ["sbwheel==1.0"]] ++ env

    log = capture_log([level: :info], fn -> start_pool!(name, env) end)
    assert log =~ "Python environment: creating the Python environment #{env[:cache_dir]}/envs/py3."
    assert log =~ "Python environment: installing 1 requirement(s) with pip: sbwheel==1.0"
    assert log =~ "Successfully installed sbwheel-1.0"
    assert log =~ "Python environment: built #{env[:cache_dir]}/envs/py3."

    assert SnakeBridge.call("sbwheel", "VALUE.upper", [], pool: name, timeout: 30_000) ==
             {:ok, "FROM THE WHEEL"}

    env_prefix = prefix(name)
    assert String.starts_with?(env_prefix, env[:cache_dir] <> "/envs/py3.")

    # Another pool with the same environment installs nothing.
    other = unique(:env_cached)
    log = capture_log([level: :info], fn -> start_pool!(other, env) end)
    refute log =~ "Python environment:"
    assert prefix(other) == env_prefix
    assert {:ok, python} = PythonEnv.install(env)
    assert python == env_prefix <> "/bin/python"
  end

  test "requirements may come from a pyproject.toml", %{root: root, env: env} do
    pyproject = Path.join(root, "pyproject.toml")

    File.write!(pyproject, """
    [project]
    name = "my-app"
    version = "0.1.0"
    dependencies = ["sbwheel==1.0"]
    """)

    name = unique(:env_pyproject)
    capture_log(fn -> start_pool!(name, [pyproject: pyproject] ++ env) end)

    assert SnakeBridge.call("sbwheel", "VALUE.title", [], pool: name, timeout: 30_000) ==
             {:ok, "From The Wheel"}
  end

  test "a requirement that cannot be installed: calls get :python_unavailable with pip's last lines",
       %{env: env} do
    name = unique(:env_missing)
    env = [requirements: ["sbwheel==2.0"]] ++ env

    log =
      capture_log(fn ->
        start_pool!(name, env)

        assert {:error, %Error{reason: :python_unavailable, message: message}} =
                 SnakeBridge.call("sbwheel", "VALUE.upper", [], pool: name, timeout: 30_000)

        assert message =~
                 "Python is unavailable for pool :#{name}: could not build the Python environment " <>
                   "(#{env[:cache_dir]}/envs, with pip): exit status 1:\n"

        assert message =~
                 "ERROR: Could not find a version that satisfies the requirement sbwheel==2.0 (from versions: 1.0)"

        assert message =~ "ERROR: No matching distribution found for sbwheel==2.0"
        assert message =~ "pip install exited with status 1"
        # The slot may still be between two of its failed starts.
        wait_until(fn -> match?(%{workers: [%{state: :unavailable}]}, SnakeBridge.stats(name)) end)
        assert %{workers: [%{state: :unavailable, os_pid: nil}]} = SnakeBridge.stats(name)
      end)

    assert log =~ "Python worker failed to start: could not build the Python environment"

    # The failed build left nothing behind but its lock file.
    assert [lock] = File.ls!(Path.join(env[:cache_dir], "envs"))
    assert String.ends_with?(lock, ".lock")

    assert {:error, %Error{reason: :python_unavailable, message: message}} = PythonEnv.install(env)
    assert message =~ "No matching distribution found for sbwheel==2.0"
  end

  test "two pools that start at once share one build", %{env: env} do
    env = [requirements: ["sbwheel==1.0"]] ++ env
    names = [unique(:env_concurrent), unique(:env_concurrent)]

    # Separate supervisors, so that neither start waits for the other's.
    supervisors =
      for name <- names do
        start_supervised!({DynamicSupervisor, strategy: :one_for_one}, id: {:sup, name})
      end

    log =
      capture_log([level: :info], fn ->
        names
        |> Enum.zip(supervisors)
        |> Enum.map(fn {name, sup} ->
          Task.async(fn ->
            DynamicSupervisor.start_child(sup, {Pool, pool_opts(name, size: 1, python_env: env)})
          end)
        end)
        |> Task.await_many(240_000)
        |> Enum.each(&assert({:ok, _} = &1))
      end)

    assert length(String.split(log, "creating the Python environment")) == 2
    assert length(String.split(log, "Successfully installed sbwheel-1.0")) == 2
    [a, b] = Enum.map(names, &prefix/1)
    assert a == b
  end

  test "uv installs the environment when it is available", %{env: env} do
    uv = System.find_executable("uv") || Path.expand(".venv/bin/uv")

    if File.exists?(uv) do
      name = unique(:env_uv)
      env = Keyword.merge(env, requirements: ["sbwheel==1.0"], installer: :uv, uv: uv)
      log = capture_log([level: :info], fn -> start_pool!(name, env) end)
      assert log =~ "creating the Python environment #{env[:cache_dir]}/envs/py3."
      assert log =~ "installing 1 requirement(s) with uv: sbwheel==1.0"

      assert SnakeBridge.call("sbwheel", "VALUE.upper", [], pool: name, timeout: 30_000) ==
               {:ok, "FROM THE WHEEL"}
    else
      IO.puts("\nuv is not installed: the uv installer is not tested (pip's is)")
    end
  end

  test "invalid options raise ArgumentError naming them", %{wheels: wheels} do
    for {env, expected} <- [
          {:yes, "expected :python_env to be a keyword list"},
          {[], "expected :python_env to have :requirements, a :pyproject or a :pyproject_toml"},
          {[requirement: ["x"]], "invalid :python_env option: unknown keys [:requirement]"},
          {[requirements: "numpy"], "expected :python_env's :requirements to be a list of strings"},
          {[requirements: [""]], "expected :python_env's :requirements to be non-empty strings"},
          {[requirements: ["a\nb"]], "to be one line each"},
          {[pyproject: "/nonexistent/pyproject.toml"],
           "expected :python_env's :pyproject to be a file"},
          {[requirements: ["x"], find_links: "/nonexistent"],
           "expected :python_env's :find_links to be directories"},
          {[requirements: ["x"], find_links: [wheels, 1]],
           "expected :python_env's :find_links to be directories, got: 1"},
          {[requirements: ["x"], offline: 1], "expected :python_env's :offline to be a boolean"},
          {[requirements: ["x"], installer: :conda],
           "expected :python_env's :installer to be :auto, :uv or :pip"},
          {[requirements: ["x"], cache_dir: 1], "expected :python_env's :cache_dir to be a path"},
          {[requirements: ["x"], uv: 1], "expected :python_env's :uv to be a path"},
          {[pyproject_toml: 1],
           "expected :python_env's :pyproject_toml to be the contents of a pyproject.toml"},
          {[pyproject: __ENV__.file, pyproject_toml: "[project]"],
           "one of :pyproject and :pyproject_toml, not both"}
        ] do
      error =
        assert_raise ArgumentError, fn -> Pool.start_link(pool_opts(:env_bad, python_env: env)) end

      assert Exception.message(error) =~ expected

      if is_list(env) do
        error = assert_raise ArgumentError, fn -> PythonEnv.install(env) end
        assert Exception.message(error) =~ expected
      end
    end
  end

  test "an interpreter that cannot be started is :python_unavailable", %{env: env} do
    env = [requirements: ["sbwheel==1.0"]] ++ env

    assert {:error, %Error{reason: :python_unavailable, message: message}} =
             PythonEnv.install([python: "/nonexistent/python3"] ++ env)

    assert message =~ ~s(could not start "/nonexistent/python3": :enoent)
  end
end
