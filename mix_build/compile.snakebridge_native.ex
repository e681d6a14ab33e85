defmodule Mix.Tasks.Compile.SnakebridgeNative do
  @moduledoc """
  Builds SnakeBridge's native parts with cargo, or takes them prebuilt, and
  installs them into the application's `priv/` under the Mix build path.

  Runs `cargo build --release -p snakebridge_nif -p snakebridge_py` (cargo's
  output is streamed as it comes), then installs into
  `Mix.Project.app_path()/priv`:

    * `native/libsnakebridge_nif.so` — the NIF, loaded by `SnakeBridge.NIF`;
    * `python/snakebridge_worker/*.py` — the Python worker package;
    * `python/snakebridge_worker/_native.abi3.so` — its pyo3 extension.

  Nothing is written into the package's own directory: cargo's target
  directory is `<build root>/snakebridge_native/target` (the `_build`
  directory, shared by the Mix environments of one project; a
  `MIX_BUILD_PATH` gets its own), so two projects that build the same
  checkout at once never share one. `CARGO_TARGET_DIR` overrides it.

  The inputs (`Cargo.toml`, `Cargo.lock`, `native/**`,
  `python_worker/snakebridge_worker/**`, this file, and the prebuilt
  directory if one is used) are fingerprinted by path, size and mtime; when
  nothing changed and the outputs exist, cargo is not run at all and the task
  returns `:noop`. `mix compile --force` rebuilds anyway.

  cargo is taken from the `CARGO` environment variable, then `PATH`, then
  `~/.cargo/bin/cargo`, and must be at least the workspace's `rust-version`.

  ## Prebuilt native libraries

  With the `SNAKEBRIDGE_PREBUILT` environment variable, or
  `config :snakebridge, prebuilt: "dir"`, naming a directory made by
  `mix snakebridge.export_native`, cargo is not needed: the two libraries
  are taken from there after checking the directory's `VERSION` (the
  package version and the system architecture) and `SHA256SUMS`.
  """

  use Mix.Task.Compiler

  @nif_crate "snakebridge_nif"
  @py_crate "snakebridge_py"
  @nif_file "libsnakebridge_nif.so"
  @py_file "_native.abi3.so"

  @doc false
  def prebuilt_files, do: [@nif_file, @py_file]

  @impl Mix.Task.Compiler
  def run(args) do
    root = project_root()
    priv = priv_dir()
    prebuilt = prebuilt_dir()
    remove_legacy_outputs(root)
    fingerprint = fingerprint(root, prebuilt)

    if "--force" not in args and up_to_date?(priv, fingerprint) do
      {:noop, []}
    else
      {nif, py} =
        case prebuilt do
          nil -> cargo_build!(root)
          {dir, from} -> check_prebuilt!(dir, from)
        end

      install!(root, priv, nif, py)
      File.mkdir_p!(Path.dirname(stamp_path()))
      File.write!(stamp_path(), fingerprint)
      {:ok, []}
    end
  end

  @impl Mix.Task.Compiler
  def manifests, do: [stamp_path()]

  @impl Mix.Task.Compiler
  def clean do
    File.rm_rf!(Path.join(priv_dir(), "native"))
    File.rm_rf!(Path.join(priv_dir(), "python"))
    File.rm_rf!(stamp_path())
    :ok
  end

  ## Build

  defp cargo_build!(root) do
    cargo = find_cargo!(root)
    target = target_dir()
    args = ["build", "--release", "-p", @nif_crate, "-p", @py_crate]
    Mix.shell().info("==> snakebridge: #{cargo} #{Enum.join(args, " ")} (target: #{target})")

    # cargo writes its progress to stderr; merge it so it streams in order.
    {_, status} =
      System.cmd(cargo, args,
        cd: root,
        env: [{"CARGO_TARGET_DIR", target}],
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0 do
      Mix.raise("snakebridge: cargo build failed (exit status #{status}); see cargo's output above")
    end

    release = Path.join(target, "release")
    {Path.join(release, lib_file(@nif_crate)), Path.join(release, lib_file(@py_crate))}
  end

  defp find_cargo!(root) do
    minimum = rust_version(root)

    from_env =
      case System.get_env("CARGO") do
        nil -> nil
        "" -> nil
        path -> if File.regular?(path), do: path, else: System.find_executable(path)
      end

    home_cargo = Path.expand("~/.cargo/bin/cargo")

    cargo =
      cond do
        from_env ->
          from_env

        path = System.find_executable("cargo") ->
          path

        File.regular?(home_cargo) ->
          home_cargo

        true ->
          Mix.raise(
            rust_message(
              minimum,
              "cargo was not found (looked at $CARGO, PATH and ~/.cargo/bin/cargo)"
            )
          )
      end

    found =
      try do
        System.cmd(cargo, ["--version"], stderr_to_stdout: true)
      rescue
        error in ErlangError -> {inspect(error.original), :error}
      end

    case found do
      {output, 0} ->
        case Regex.run(~r/^cargo (\d+)\.(\d+)\.(\d+)/, output) do
          [version | numbers] ->
            if Enum.map(numbers, &String.to_integer/1) < version_list(minimum) do
              Mix.raise(rust_message(minimum, "#{cargo} is #{version}"))
            end

            cargo

          nil ->
            Mix.raise(
              rust_message(minimum, "#{cargo} --version printed #{inspect(String.trim(output))}")
            )
        end

      {output, _} ->
        Mix.raise(rust_message(minimum, "#{cargo} --version failed: #{String.trim(output)}"))
    end
  end

  # The workspace's rust-version: the newest that a locked dependency needs.
  defp rust_version(root) do
    toml = File.read!(Path.join(root, "Cargo.toml"))

    case Regex.run(~r/^rust-version\s*=\s*"([\d.]+)"/m, toml) do
      [_, version] -> version
      nil -> Mix.raise("snakebridge: Cargo.toml has no rust-version")
    end
  end

  defp version_list(version) do
    version
    |> String.split(".")
    |> Enum.map(&String.to_integer/1)
    |> Kernel.++([0, 0, 0])
    |> Enum.take(3)
  end

  defp rust_message(minimum, problem) do
    """
    snakebridge: building its native code needs Rust #{minimum} or newer, but #{problem}.
    Install or update Rust with rustup (https://rustup.rs): `rustup update stable`.
    Or set CARGO=/path/to/cargo, or use prebuilt native libraries
    (SNAKEBRIDGE_PREBUILT; see "Prebuilt native libraries" in SnakeBridge's README).
    """
  end

  defp target_dir do
    case System.get_env("CARGO_TARGET_DIR") do
      dir when dir in [nil, ""] -> Path.join(build_root(), "snakebridge_native/target")
      dir -> Path.expand(dir)
    end
  end

  # The environments of one project share the build: cargo's output does not
  # depend on the Mix environment.
  defp build_root do
    build_path = Mix.Project.build_path()

    case System.get_env("MIX_BUILD_PATH") do
      dir when dir in [nil, ""] -> Path.dirname(build_path)
      _ -> build_path
    end
  end

  ## Prebuilt

  defp prebuilt_dir do
    case {System.get_env("SNAKEBRIDGE_PREBUILT"), Application.get_env(:snakebridge, :prebuilt)} do
      {dir, _} when dir not in [nil, ""] ->
        {Path.expand(dir), "SNAKEBRIDGE_PREBUILT"}

      {_, dir} when is_binary(dir) ->
        {Path.expand(dir), "config :snakebridge, :prebuilt"}

      {_, nil} ->
        nil

      {_, other} ->
        Mix.raise(
          "snakebridge: config :snakebridge, :prebuilt must be a directory, got: #{inspect(other)}"
        )
    end
  end

  defp check_prebuilt!(dir, from) do
    fail = fn problem ->
      Mix.raise("""
      snakebridge: the prebuilt native directory #{dir} (from #{from}) cannot be used: #{problem}.
      Make it again with `mix snakebridge.export_native #{dir}` where cargo is available, or unset #{from} to build with cargo.
      """)
    end

    File.dir?(dir) || fail.("it is not a directory")
    expected = expected_version()

    case File.read(Path.join(dir, "VERSION")) do
      {:ok, content} ->
        found = String.trim(content)

        if found != expected do
          fail.("it was built for #{inspect(found)}, this is #{inspect(expected)}")
        end

      {:error, reason} ->
        fail.("its VERSION cannot be read (#{:file.format_error(reason)})")
    end

    sums =
      case File.read(Path.join(dir, "SHA256SUMS")) do
        {:ok, content} ->
          for line <- String.split(content, "\n", trim: true), into: %{} do
            case String.split(line, ~r/\s+\*?/, parts: 2) do
              [sum, file] -> {String.trim(file), String.downcase(sum)}
              _ -> fail.("SHA256SUMS has a malformed line: #{inspect(line)}")
            end
          end

        {:error, reason} ->
          fail.("its SHA256SUMS cannot be read (#{:file.format_error(reason)})")
      end

    for file <- prebuilt_files() do
      path = Path.join(dir, file)
      sum = Map.get(sums, file) || fail.("SHA256SUMS has no checksum for #{file}")

      case File.read(path) do
        {:ok, bytes} ->
          if sha256(bytes) != sum, do: fail.("#{file} does not match its checksum in SHA256SUMS")

        {:error, reason} ->
          fail.("#{file} cannot be read (#{:file.format_error(reason)})")
      end
    end

    Mix.shell().info("==> snakebridge: using prebuilt native libraries from #{dir}")
    {Path.join(dir, @nif_file), Path.join(dir, @py_file)}
  end

  @doc false
  # What a prebuilt directory's VERSION must say: the package version and the
  # system it runs on.
  def expected_version do
    "snakebridge #{Mix.Project.config()[:version]} #{:erlang.system_info(:system_architecture)}"
  end

  @doc false
  def sha256(bytes), do: :crypto.hash(:sha256, bytes) |> Base.encode16(case: :lower)

  ## Install

  defp install!(root, priv, nif_src, py_src) do
    worker_src = Path.join(root, "python_worker/snakebridge_worker")

    for path <- [nif_src, py_src] do
      File.regular?(path) || Mix.raise("snakebridge: #{path} is missing")
    end

    File.dir?(worker_src) || Mix.raise("snakebridge: #{worker_src} is missing")

    # A running VM (or Python worker) may have the old library mapped: writing
    # over that file in place can crash it. Unlinking first leaves the old
    # inode alive for whoever maps it and gives the new copy a fresh inode.
    nif_dest = Path.join(priv, "native/#{@nif_file}")
    File.mkdir_p!(Path.dirname(nif_dest))
    File.rm(nif_dest)
    File.cp!(nif_src, nif_dest)

    pkg_dest = Path.join(priv, "python/snakebridge_worker")
    File.rm_rf!(Path.join(priv, "python"))
    File.mkdir_p!(pkg_dest)

    for file <- Path.wildcard(Path.join(worker_src, "**/*.py")) do
      dest = Path.join(pkg_dest, Path.relative_to(file, worker_src))
      File.mkdir_p!(Path.dirname(dest))
      File.cp!(file, dest)
    end

    File.cp!(py_src, Path.join(pkg_dest, @py_file))
    Mix.shell().info("==> snakebridge: installed native libraries and worker into #{priv}")
  end

  defp lib_file(crate) do
    case :os.type() do
      {:unix, :darwin} -> "lib#{crate}.dylib"
      _ -> "lib#{crate}.so"
    end
  end

  defp priv_dir do
    priv = Path.join(Mix.Project.app_path(), "priv")

    # Mix links the build's priv to the package's priv/ when that exists (an
    # older version installed there): the outputs belong to the build.
    case File.read_link(priv) do
      {:ok, _} -> File.rm!(priv)
      {:error, _} -> :ok
    end

    priv
  end

  # Older versions installed into the package's own priv/ and stamped its
  # root; left there, Mix would link or copy them over the build's priv.
  defp remove_legacy_outputs(root) do
    File.rm_rf!(Path.join(root, "priv/native"))
    File.rm_rf!(Path.join(root, "priv/python"))
    File.rm(Path.join(root, ".build-stamp"))
    File.rmdir(Path.join(root, "priv"))
  end

  defp stamp_path, do: Path.join(Mix.Project.manifest_path(), "snakebridge_native.stamp")

  ## Staleness

  defp up_to_date?(priv, fingerprint) do
    outputs = ["native/#{@nif_file}", "python/snakebridge_worker/#{@py_file}"]

    Enum.all?(outputs, &File.regular?(Path.join(priv, &1))) and
      File.read(stamp_path()) == {:ok, fingerprint}
  end

  # Path, size and mtime of every input, hashed: any edit, addition or removal
  # changes it. Cheap enough to run on every `mix compile`.
  defp fingerprint(root, prebuilt) do
    files =
      ["Cargo.toml", "Cargo.lock", Path.relative_to(__ENV__.file, root)] ++
        walk(root, "native") ++ walk(root, "python_worker/snakebridge_worker")

    entries =
      files
      |> Enum.uniq()
      |> Enum.sort()
      |> Enum.map(&stat(Path.join(root, &1), &1))

    prebuilt_entries =
      case prebuilt do
        nil ->
          [:cargo]

        {dir, _} ->
          Enum.map(["VERSION", "SHA256SUMS" | prebuilt_files()], &stat(Path.join(dir, &1), &1))
      end

    {entries, prebuilt, prebuilt_entries}
    |> :erlang.term_to_binary()
    |> :erlang.md5()
    |> Base.encode16(case: :lower)
  end

  defp stat(path, name) do
    case File.stat(path, time: :posix) do
      {:ok, %File.Stat{size: size, mtime: mtime}} -> {name, size, mtime}
      {:error, _} -> {name, :missing}
    end
  end

  defp walk(root, dir) do
    full = Path.join(root, dir)

    case File.ls(full) do
      {:ok, names} ->
        Enum.flat_map(names, fn name ->
          rel = Path.join(dir, name)

          cond do
            name in ["target", "__pycache__", ".pytest_cache"] -> []
            File.dir?(Path.join(root, rel)) -> walk(root, rel)
            true -> [rel]
          end
        end)

      {:error, _} ->
        []
    end
  end

  defp project_root do
    Path.dirname(Mix.Project.project_file())
  end
end
