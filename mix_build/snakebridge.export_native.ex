defmodule Mix.Tasks.Snakebridge.ExportNative do
  @shortdoc "Copies SnakeBridge's built native libraries into a directory for SNAKEBRIDGE_PREBUILT"

  @moduledoc """
  Compiles the project, then copies SnakeBridge's two native libraries into
  a directory, with a `VERSION` file (the package version and the system
  architecture) and `SHA256SUMS`:

      mix snakebridge.export_native /path/to/dir

  Point `SNAKEBRIDGE_PREBUILT` (or `config :snakebridge, prebuilt: dir`) at
  that directory on a machine of the same architecture, and compiling
  SnakeBridge there takes the libraries from it instead of running cargo.
  """

  use Mix.Task

  alias Mix.Tasks.Compile.SnakebridgeNative, as: Native

  @impl Mix.Task
  def run(args) do
    dir =
      case OptionParser.parse!(args, strict: []) do
        {_, [dir]} -> Path.expand(dir)
        _ -> Mix.raise("usage: mix snakebridge.export_native DIR")
      end

    Mix.Task.run("compile", [])

    priv =
      case :code.priv_dir(:snakebridge) do
        {:error, _} -> Mix.raise("snakebridge: the :snakebridge application is not compiled")
        priv -> List.to_string(priv)
      end

    sources = %{
      "libsnakebridge_nif.so" => Path.join(priv, "native/libsnakebridge_nif.so"),
      "_native.abi3.so" => Path.join(priv, "python/snakebridge_worker/_native.abi3.so")
    }

    File.mkdir_p!(dir)

    sums =
      for file <- Native.prebuilt_files() do
        dest = Path.join(dir, file)
        File.rm(dest)
        File.cp!(Map.fetch!(sources, file), dest)
        "#{Native.sha256(File.read!(dest))}  #{file}\n"
      end

    File.write!(Path.join(dir, "SHA256SUMS"), sums)
    File.write!(Path.join(dir, "VERSION"), Native.expected_version() <> "\n")
    Mix.shell().info("==> snakebridge: exported native libraries to #{dir}")
  end
end
