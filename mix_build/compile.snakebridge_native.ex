defmodule Mix.Tasks.Compile.SnakebridgeNative do
  @moduledoc """
  Builds SnakeBridge's native parts with cargo and installs them into `priv/`.

  Runs `cargo build --release -p snakebridge_nif -p snakebridge_py` in the
  project root (cargo's output is streamed as it comes), then installs:

    * `priv/native/libsnakebridge_nif.so` — the NIF, loaded by `SnakeBridge.NIF`;
    * `priv/python/snakebridge_worker/*.py` — the Python worker package;
    * `priv/python/snakebridge_worker/_native.abi3.so` — its pyo3 extension.

  The inputs (`Cargo.toml`, `Cargo.lock`, `native/**`,
  `python_worker/snakebridge_worker/**` and this file) are fingerprinted by
  path, size and mtime into `.build-stamp`; when nothing changed and the
  outputs exist, cargo is not run at all and the task returns `:noop`.
  `mix compile --force` rebuilds anyway.

  cargo is taken from the `CARGO` environment variable, then `PATH`, then
  `~/.cargo/bin/cargo`. `CARGO_TARGET_DIR` is respected.
  """

  use Mix.Task.Compiler

  @nif_crate "snakebridge_nif"
  @py_crate "snakebridge_py"
  @stamp ".build-stamp"

  @impl Mix.Task.Compiler
  def run(args) do
    root = project_root()
    stamp_path = Path.join(root, @stamp)
    fingerprint = fingerprint(root)

    result =
      if "--force" not in args and up_to_date?(root, stamp_path, fingerprint) do
        :noop
      else
        cargo_build!(root)
        install!(root)
        File.write!(stamp_path, fingerprint)
        :ok
      end

    # Mix links _build/<env>/lib/snakebridge/priv to priv/ before the
    # compilers run, and only when priv/ exists: on a fresh clone it is this
    # task that creates priv/, so link it now or the NIF would not be found.
    Mix.Project.build_structure()
    {result, []}
  end

  @impl Mix.Task.Compiler
  def manifests, do: []

  @impl Mix.Task.Compiler
  def clean do
    root = project_root()
    File.rm_rf!(Path.join(root, "priv/native"))
    File.rm_rf!(Path.join(root, "priv/python"))
    File.rm_rf!(Path.join(root, @stamp))
    :ok
  end

  ## Build

  defp cargo_build!(root) do
    cargo = find_cargo!()
    args = ["build", "--release", "-p", @nif_crate, "-p", @py_crate]
    Mix.shell().info("==> snakebridge: #{cargo} #{Enum.join(args, " ")}")

    # cargo writes its progress to stderr; merge it so it streams in order.
    {_, status} =
      System.cmd(cargo, args,
        cd: root,
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0 do
      Mix.raise("snakebridge: cargo build failed (exit status #{status}); see cargo's output above")
    end
  end

  defp find_cargo! do
    from_env =
      case System.get_env("CARGO") do
        nil -> nil
        "" -> nil
        path -> if File.regular?(path), do: path, else: System.find_executable(path)
      end

    home_cargo = Path.expand("~/.cargo/bin/cargo")

    cond do
      from_env -> from_env
      path = System.find_executable("cargo") -> path
      File.regular?(home_cargo) -> home_cargo
      true -> Mix.raise(missing_cargo_message())
    end
  end

  defp missing_cargo_message do
    """
    snakebridge: cargo was not found (looked at $CARGO, PATH and ~/.cargo/bin/cargo).
    SnakeBridge builds its NIF and Python extension with Rust; install a Rust
    toolchain (https://rustup.rs) or set CARGO=/path/to/cargo, then run mix compile again.
    """
  end

  ## Install

  defp install!(root) do
    release = Path.join(target_dir(root), "release")
    priv = Path.join(root, "priv")

    nif_src = Path.join(release, lib_file(@nif_crate))
    py_src = Path.join(release, lib_file(@py_crate))
    worker_src = Path.join(root, "python_worker/snakebridge_worker")

    for path <- [nif_src, py_src] do
      File.regular?(path) || Mix.raise("snakebridge: cargo finished but #{path} is missing")
    end

    File.dir?(worker_src) || Mix.raise("snakebridge: #{worker_src} is missing")

    # A running VM (or Python worker) may have the old library mapped: writing
    # over that file in place can crash it. Unlinking first leaves the old
    # inode alive for whoever maps it and gives the new copy a fresh inode.
    nif_dest = Path.join(priv, "native/libsnakebridge_nif.so")
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

    File.cp!(py_src, Path.join(pkg_dest, "_native.abi3.so"))
    Mix.shell().info("==> snakebridge: installed native libraries and worker into priv/")
  end

  defp lib_file(crate) do
    case :os.type() do
      {:unix, :darwin} -> "lib#{crate}.dylib"
      _ -> "lib#{crate}.so"
    end
  end

  defp target_dir(root) do
    case System.get_env("CARGO_TARGET_DIR") do
      dir when dir in [nil, ""] -> Path.join(root, "target")
      dir -> Path.expand(dir, root)
    end
  end

  ## Staleness

  defp up_to_date?(root, stamp_path, fingerprint) do
    outputs = [
      "priv/native/libsnakebridge_nif.so",
      "priv/python/snakebridge_worker/_native.abi3.so"
    ]

    Enum.all?(outputs, &File.regular?(Path.join(root, &1))) and
      File.read(stamp_path) == {:ok, fingerprint}
  end

  # Path, size and mtime of every input, hashed: any edit, addition or removal
  # changes it. Cheap enough to run on every `mix compile`.
  defp fingerprint(root) do
    files =
      ["Cargo.toml", "Cargo.lock", Path.relative_to(__ENV__.file, root)] ++
        walk(root, "native") ++ walk(root, "python_worker/snakebridge_worker")

    entries =
      files
      |> Enum.uniq()
      |> Enum.sort()
      |> Enum.map(fn rel ->
        case File.stat(Path.join(root, rel), time: :posix) do
          {:ok, %File.Stat{size: size, mtime: mtime}} -> {rel, size, mtime}
          {:error, _} -> {rel, :missing}
        end
      end)

    entries |> :erlang.term_to_binary() |> :erlang.md5() |> Base.encode16(case: :lower)
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
