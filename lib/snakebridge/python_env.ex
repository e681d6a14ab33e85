defmodule SnakeBridge.PythonEnv do
  @moduledoc """
  Python environments declared in Elixir: a virtualenv with a pool's
  packages, built once and kept in a cache directory.

      {SnakeBridge.Pool,
       name: :ml,
       python: "python3.11",
       python_env: [requirements: ["numpy==2.1.3", "scikit-learn>=1.5"]]}

  The pool's `:python` is the base interpreter. SnakeBridge creates a
  virtualenv from it, installs the requirements, and runs the pool's workers
  with the environment's interpreter. The environment's directory is keyed
  by the base interpreter (its version and path) and the requirements (and
  the install options), so the next start finds it in the cache and installs
  nothing; change a requirement and a new environment is built beside the
  old one.

  Installation uses [`uv`](https://docs.astral.sh/uv/) when it is on `PATH`
  (`uv venv`, then `uv pip install`), and otherwise `python -m venv` and the
  environment's own `pip`. Progress (and the installer's output) goes to
  `Logger` at `:info`.

  Pools that need the same environment at the same time share one build:
  builds of one directory are serialised by a lock file beside it (an
  exclusive `flock`, which the kernel releases should the build die), so
  this holds for pools in one BEAM and across OS processes. Whoever gets the
  lock second finds the environment built.

  A failed build leaves no directory behind. A pool whose environment cannot
  be built still starts, and its calls return
  `{:error, %SnakeBridge.Error{reason: :python_unavailable}}` whose message
  ends with the installer's last lines:

      Python is unavailable for pool :ml: could not build the Python environment
      (/home/me/.cache/snakebridge/envs, with pip): exit status 1:
      ...
      ERROR: Could not find a version that satisfies the requirement numpyy==2.1.3 (from versions: none)
      ERROR: No matching distribution found for numpyy==2.1.3

  ## Options

    * `:requirements` — pip requirement specifiers, for example
      `["numpy==2.1.3", "pandas>=2"]`. Default `[]`.
    * `:pyproject` — the path of a `pyproject.toml` whose `[project]
      dependencies` are installed, after `:requirements`. Default `nil`.
    * `:pyproject_toml` — the same, given as the file's contents (as
      Pythonx's `uv_init` takes it). Default `nil`.
    * `:find_links` — a directory (or a list of them) of wheels to install
      from, besides the package index (pip's and uv's `--find-links`).
      Default `[]`.
    * `:offline` — `true` to use no package index at all, only
      `:find_links` (pip's `--no-index`; uv's `--offline --no-index`).
      Default `false`.
    * `:cache_dir` — where environments are kept. Default:
      `$SNAKEBRIDGE_CACHE_DIR`, else `:filename.basedir(:user_cache, "snakebridge")`,
      with environments in its `envs/`.
    * `:installer` — `:auto` (uv when found, else pip), `:uv` or `:pip`.
      Default `:auto`.
    * `:uv` — the uv executable. Default: `uv` looked up in `PATH`.

  At least one of `:requirements`, `:pyproject` and `:pyproject_toml` must
  be given, and at most one of the last two. Invalid
  options raise `ArgumentError`.

  ## In a notebook

  `init/2` does the same for the default pool, like Pythonx's `uv_init`:

      Mix.install([{:snakebridge, path: "/path/to/snakebridge"}])
      :ok =
        SnakeBridge.PythonEnv.init(
          pyproject_toml: \"\"\"
          [project]
          name = "notebook"
          version = "0.0.0"
          dependencies = ["numpy==2.1.3"]
          \"\"\"
        )

      SnakeBridge.call!("numpy", "__version__.__str__")
  """

  require Logger

  alias SnakeBridge.Error

  @typedoc "An option of `:python_env`; see the module documentation."
  @type option ::
          {:requirements, [String.t()]}
          | {:pyproject, Path.t() | nil}
          | {:pyproject_toml, String.t() | nil}
          | {:find_links, Path.t() | [Path.t()]}
          | {:offline, boolean()}
          | {:cache_dir, Path.t() | nil}
          | {:installer, :auto | :uv | :pip}
          | {:uv, Path.t() | nil}

  @defaults [
    requirements: [],
    pyproject: nil,
    pyproject_toml: nil,
    find_links: [],
    offline: false,
    cache_dir: nil,
    installer: :auto,
    uv: nil
  ]
  # Installer lines kept to explain a failed build.
  @tail_lines 20
  @python_prefix "snakebridge-python: "
  @progress_prefix "snakebridge: "

  @doc """
  Builds the environment (or finds it in the cache) and returns the path of
  its interpreter. Blocks until it is ready.

  Takes the options of the module documentation plus `:python`, the base
  interpreter (default: the pool's default, `$SNAKEBRIDGE_PYTHON` or
  `"python3"`). Returns `{:error, %SnakeBridge.Error{reason: :python_unavailable}}`
  with the installer's last lines when the environment cannot be built.
  Raises `ArgumentError` on invalid options.

  ## Examples

      {:ok, python} = SnakeBridge.PythonEnv.install(requirements: ["numpy==2.1.3"])
      #=> {:ok, "/home/me/.cache/snakebridge/envs/py3.11-3f0c9a1e2b7d4c55/bin/python"}
  """
  @spec install([option() | {:python, String.t()}]) :: {:ok, String.t()} | {:error, Error.t()}
  def install(opts) when is_list(opts) do
    {python, opts} = Keyword.pop(opts, :python)
    python = SnakeBridge.Pool.config!(python: python).python
    build(options!(opts), python, [])
  end

  def install(opts) do
    raise ArgumentError, "expected the options to be a keyword list, got: #{inspect(opts)}"
  end

  @doc """
  For notebooks: builds the environment, then restarts the default pool in
  it. Returns `:ok` once the pool runs there, or the build's
  `{:error, %SnakeBridge.Error{reason: :python_unavailable}}`, leaving the
  default pool as it was.

  `env_opts` are the options of the module documentation; `pool_opts`
  (`SnakeBridge.Pool` options such as `:size` or `:python`) are merged over
  the default pool's configuration. Calling it again replaces the
  environment. The new configuration is also stored in the application
  environment, so a restart of the application keeps it.

  ## Examples

      :ok = SnakeBridge.PythonEnv.init([requirements: ["numpy==2.1.3"]], size: 2)
  """
  @spec init([option()], [SnakeBridge.Pool.option()]) :: :ok | {:error, Error.t()}
  def init(env_opts, pool_opts \\ []) do
    unless Keyword.keyword?(pool_opts) do
      raise ArgumentError, "expected pool_opts to be a keyword list, got: #{inspect(pool_opts)}"
    end

    configured =
      case Application.get_env(:snakebridge, :default_pool, []) do
        opts when is_list(opts) -> opts
        _ -> []
      end

    pool_opts =
      configured
      |> Keyword.merge(pool_opts)
      |> Keyword.merge(name: :default, python_env: env_opts)

    # Validates every option before anything is built or stopped.
    config = SnakeBridge.Pool.config!(pool_opts)

    with {:ok, _python} <- build(config.python_env, config.python, pool: :default) do
      restart_default_pool(pool_opts)
    end
  end

  defp restart_default_pool(pool_opts) do
    supervisor = SnakeBridge.Supervisor
    id = {SnakeBridge.Pool, :default}
    _ = Supervisor.terminate_child(supervisor, id)
    _ = Supervisor.delete_child(supervisor, id)
    Application.put_env(:snakebridge, :default_pool, Keyword.delete(pool_opts, :name))

    case Supervisor.start_child(supervisor, {SnakeBridge.Pool, pool_opts}) do
      {:ok, _pid} ->
        :ok

      {:error, {%Error{} = error, _child}} ->
        {:error, error}

      {:error, %Error{} = error} ->
        {:error, error}

      {:error, reason} ->
        {:error,
         %Error{
           reason: :python_unavailable,
           message: "the default pool did not start: #{inspect(reason)}",
           details: %{}
         }}
    end
  end

  @doc false
  @spec options!(term()) :: map()
  def options!(opts) when is_list(opts) do
    opts = SnakeBridge.Args.sub_opts!(opts, @defaults, :python_env)

    requirements = requirements!(opts[:requirements])
    pyproject = pyproject!(opts[:pyproject])
    pyproject_toml = pyproject_toml!(opts[:pyproject_toml])

    if pyproject && pyproject_toml do
      raise ArgumentError,
            "expected :python_env to have one of :pyproject and :pyproject_toml, not both"
    end

    if requirements == [] and pyproject == nil and pyproject_toml == nil do
      raise ArgumentError,
            "expected :python_env to have :requirements, a :pyproject or a :pyproject_toml"
    end

    %{
      requirements: requirements,
      pyproject: pyproject,
      pyproject_toml: pyproject_toml,
      find_links: find_links!(opts[:find_links]),
      offline: boolean!(opts[:offline], :offline),
      cache_dir: cache_dir!(opts[:cache_dir]),
      installer: installer!(opts[:installer]),
      uv: uv!(opts[:uv])
    }
  end

  def options!(other) do
    raise ArgumentError,
          "expected :python_env to be a keyword list (:requirements, :pyproject, ...), got: #{inspect(other)}"
  end

  @doc false
  @spec build(map(), String.t(), keyword()) :: {:ok, String.t()} | {:error, Error.t()}
  def build(options, python, metadata) do
    script = Application.app_dir(:snakebridge, "priv/python/snakebridge_worker/envbuild.py")
    with_pyproject_file(options, fn options -> run_builder(options, python, metadata, script) end)
  end

  # The builder reads a file: contents are written to a temporary one.
  defp with_pyproject_file(%{pyproject_toml: nil} = options, fun), do: fun.(options)

  defp with_pyproject_file(%{pyproject_toml: contents} = options, fun) do
    path =
      Path.join(
        System.tmp_dir!(),
        "snakebridge-pyproject-#{System.unique_integer([:positive])}.toml"
      )

    File.write!(path, contents)

    try do
      fun.(%{options | pyproject: path})
    after
      File.rm(path)
    end
  end

  defp run_builder(options, python, metadata, script) do
    try do
      Port.open({:spawn_executable, python}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 16_384},
        args: ["-I", script | script_args(options)]
      ])
    rescue
      error in ErlangError ->
        {:error, failure(options, "could not start #{inspect(python)}: #{inspect(error.original)}")}
    else
      port -> collect(port, options, metadata, {[], ""})
    end
  end

  # Keeps the last @tail_lines lines (newest first) and the line being cut
  # into pieces by the port.
  defp collect(port, options, metadata, {tail, partial}) do
    receive do
      {^port, {:data, {:noeol, part}}} ->
        collect(port, options, metadata, {tail, partial <> part})

      {^port, {:data, {:eol, part}}} ->
        line = partial <> part

        unless String.starts_with?(line, @python_prefix) do
          Logger.info("Python environment: " <> strip_progress(line), metadata)
        end

        collect(port, options, metadata, {[line | Enum.take(tail, @tail_lines - 1)], ""})

      {^port, {:exit_status, status}} ->
        finish(status, tail, options, metadata)
    end
  end

  defp finish(0, [@python_prefix <> python | _], _options, metadata) do
    Logger.debug(fn -> "Python environment ready: #{python}" end, metadata)
    {:ok, python}
  end

  defp finish(status, tail, options, _metadata) do
    lines = tail |> Enum.reverse() |> Enum.map(&strip_progress/1)
    {:error, failure(options, "exit status #{status}:\n" <> Enum.join(lines, "\n"))}
  end

  defp strip_progress(@progress_prefix <> line), do: line
  defp strip_progress(line), do: line

  defp failure(options, detail) do
    %Error{
      reason: :python_unavailable,
      message:
        "could not build the Python environment (#{Path.join(options.cache_dir, "envs")}, " <>
          "with #{installer_name(options)}): #{detail}",
      details: %{}
    }
  end

  defp installer_name(%{installer: :pip}), do: "pip"
  defp installer_name(%{installer: :uv}), do: "uv"
  defp installer_name(options), do: if(uv(options), do: "uv", else: "pip")

  defp uv(%{installer: :pip}), do: nil
  defp uv(%{uv: nil}), do: System.find_executable("uv")
  defp uv(%{uv: uv}), do: uv

  defp script_args(options) do
    List.flatten([
      "--cache-dir=" <> Path.join(options.cache_dir, "envs"),
      Enum.map(options.requirements, &("--requirement=" <> &1)),
      if(options.pyproject, do: ["--pyproject=" <> options.pyproject], else: []),
      Enum.map(options.find_links, &("--find-links=" <> &1)),
      if(options.offline, do: ["--offline"], else: []),
      "--installer=#{options.installer}",
      case uv(options) do
        nil -> []
        uv -> ["--uv=" <> uv]
      end
    ])
  end

  defp requirements!(list) when is_list(list) do
    Enum.map(list, fn
      requirement when is_binary(requirement) and requirement != "" ->
        if String.contains?(requirement, ["\n", "\r", <<0>>]) do
          raise ArgumentError,
                "expected :python_env's :requirements to be one line each, got: #{inspect(requirement)}"
        end

        requirement

      other ->
        raise ArgumentError,
              "expected :python_env's :requirements to be non-empty strings, got: #{inspect(other)}"
    end)
  end

  defp requirements!(other) do
    raise ArgumentError,
          "expected :python_env's :requirements to be a list of strings, got: #{inspect(other)}"
  end

  defp pyproject_toml!(nil), do: nil
  defp pyproject_toml!(contents) when is_binary(contents), do: contents

  defp pyproject_toml!(other) do
    raise ArgumentError,
          "expected :python_env's :pyproject_toml to be the contents of a pyproject.toml, got: #{inspect(other)}"
  end

  defp pyproject!(nil), do: nil

  defp pyproject!(path) when is_binary(path) do
    path = Path.expand(path)

    unless File.regular?(path) do
      raise ArgumentError, "expected :python_env's :pyproject to be a file, got: #{inspect(path)}"
    end

    path
  end

  defp pyproject!(other) do
    raise ArgumentError, "expected :python_env's :pyproject to be a path, got: #{inspect(other)}"
  end

  defp find_links!(path) when is_binary(path), do: find_links!([path])

  defp find_links!(paths) when is_list(paths) do
    Enum.map(paths, fn
      path when is_binary(path) ->
        path = Path.expand(path)

        unless File.dir?(path) do
          raise ArgumentError,
                "expected :python_env's :find_links to be directories, got: #{inspect(path)}"
        end

        path

      other ->
        raise ArgumentError,
              "expected :python_env's :find_links to be directories, got: #{inspect(other)}"
    end)
  end

  defp find_links!(other) do
    raise ArgumentError,
          "expected :python_env's :find_links to be a directory or a list of them, got: #{inspect(other)}"
  end

  defp boolean!(value, _key) when is_boolean(value), do: value

  defp boolean!(value, key) do
    raise ArgumentError,
          "expected :python_env's #{inspect(key)} to be a boolean, got: #{inspect(value)}"
  end

  defp cache_dir!(nil) do
    case System.get_env("SNAKEBRIDGE_CACHE_DIR") do
      dir when dir in [nil, ""] -> :filename.basedir(:user_cache, "snakebridge") |> to_string()
      dir -> Path.expand(dir)
    end
  end

  defp cache_dir!(dir) when is_binary(dir), do: Path.expand(dir)

  defp cache_dir!(other) do
    raise ArgumentError, "expected :python_env's :cache_dir to be a path, got: #{inspect(other)}"
  end

  defp uv!(nil), do: nil
  defp uv!(path) when is_binary(path), do: Path.expand(path)

  defp uv!(other) do
    raise ArgumentError, "expected :python_env's :uv to be a path, got: #{inspect(other)}"
  end

  defp installer!(installer) when installer in [:auto, :uv, :pip], do: installer

  defp installer!(other) do
    raise ArgumentError,
          "expected :python_env's :installer to be :auto, :uv or :pip, got: #{inspect(other)}"
  end
end
