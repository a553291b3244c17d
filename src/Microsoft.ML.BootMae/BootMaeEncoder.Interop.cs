using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae;

// The encoder's interop with other tools: import from PyTorch files (official BootMAE / MAE, timm, Hugging Face), export
// as .safetensors for PyTorch and as ONNX for serving without TorchSharp.
public sealed partial class BootMaeEncoder
{
    /// <summary>
    /// Imports encoder weights saved by PyTorch with a known shape: see <see cref="FromPyTorch(string, BootMaePyTorchImportOptions?)"/>,
    /// which this calls with <see cref="BootMaePyTorchImportOptions.Architecture"/> = <paramref name="architecture"/>.
    /// </summary>
    /// <param name="path">The weights file. Nothing in it is executed: <c>.pth</c> files are read as data only.</param>
    /// <param name="architecture">The shape the weights were trained with (e.g. <see cref="BootMaeArchitecture.VitBase16"/>).
    /// Its <see cref="BootMaeArchitecture.Normalization"/> counts as a choice only when it is not the default.</param>
    /// <exception cref="InvalidDataException">Encoder weights are missing or have the wrong shape for <paramref name="architecture"/>.</exception>
    /// <exception cref="InvalidOperationException">The key names do not tell the input normalisation; pass it in the options.</exception>
    public static BootMaeEncoder FromPyTorch(string path, BootMaeArchitecture architecture)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        return FromPyTorch(path, new BootMaePyTorchImportOptions { Architecture = architecture });
    }

    /// <summary>
    /// Imports encoder weights saved by PyTorch: an official BootMAE or MAE training checkpoint, a timm ViT, a Hugging Face
    /// <c>ViTMAEModel</c> / <c>ViTMAEForPreTraining</c> (or <c>ViTModel</c>), or weights exported by
    /// <see cref="ExportSafetensors"/>, as <c>.safetensors</c> or <c>.pth</c>/<c>.pt</c>/<c>.bin</c>.
    /// </summary>
    /// <param name="path">The weights file. Nothing in it is executed: <c>.pth</c> files are read as data only.</param>
    /// <param name="options">Architecture, which network of a checkpoint, normalisation, image size, log; <c>null</c> infers all from the file.</param>
    /// <remarks>
    /// <para><b>Checkpoints.</b> The weights may sit at the top level or under <c>model</c> / <c>state_dict</c> / <c>module</c>
    /// (the student), or <c>model_ema</c> (the teacher, with <see cref="BootMaeCheckpointModel.Teacher"/>); the other entries of
    /// an official checkpoint (<c>optimizer</c>, <c>scaler</c>, <c>epoch</c>, the <c>args</c> Namespace) are read as data and
    /// ignored. Keys may carry <c>module.</c>, <c>model.</c>, <c>encoder.</c>, <c>backbone.</c> or <c>vit.</c> prefixes.</para>
    /// <para><b>Names.</b> Decoder and head keys are ignored. A fused <c>attn.qkv.bias</c> (MAE, timm) becomes q_bias and v_bias,
    /// and Hugging Face's separate query / key / value weights one qkv weight; a key bias is dropped, which is exact: it adds
    /// the same amount to every logit of a query, which softmax ignores. <c>pos_embed</c> is taken from the file (MAE orders the
    /// sin-cos halves differently, timm's is learned) and resampled bicubically when the image size differs from its grid.</para>
    /// <para><b>Architecture.</b> When not given it is inferred from the shapes; heads, which shapes do not record, come from
    /// <see cref="BootMaePyTorchImportOptions.Heads"/> or the presets' rule. <b>Normalisation:</b> see
    /// <see cref="BootMaePyTorchImportOptions.Normalization"/>; it is stored in <see cref="Architecture"/> and applied everywhere.
    /// Every decision is reported through <see cref="BootMaePyTorchImportOptions.Log"/>.</para>
    /// </remarks>
    /// <exception cref="InvalidDataException">The file holds no usable encoder weights (the message says what it holds), or they do not fit the given architecture.</exception>
    /// <exception cref="InvalidOperationException">The key names do not tell the input normalisation; set <see cref="BootMaePyTorchImportOptions.Normalization"/>.</exception>
    public static BootMaeEncoder FromPyTorch(string path, BootMaePyTorchImportOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        options ??= new BootMaePyTorchImportOptions();
        if (!Enum.IsDefined(options.Model))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.Model, "BootMaePyTorchImportOptions.Model must be Student or Teacher.");
        }

        if (options.Architecture is { } given)
        {
            given.Validate();
            if (options.ImageSize is { } size && size != given.ImageSize)
            {
                throw new ArgumentException($"BootMaePyTorchImportOptions.ImageSize {size} differs from Architecture.ImageSize {given.ImageSize}; set one of them.", nameof(options));
            }
        }

        options.Normalization?.Validate(options.Architecture?.Channels ?? 3);
        BootMaeRuntime.EnsureTorchLoaded();
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"PyTorch weights file '{path}' does not exist.", path);
        }

        var log = options.Log;
        var (raw, owned, args) = PyTorchWeights.Read(path, options.Model, log);
        try
        {
            // First the shape (no tensor leaves this scope), then the module outside any scope, since its parameters
            // must outlive it, then the weights mapped again (views, and one concatenation per block for HF names).
            BootMaeArchitecture architecture;
            using (var scope = NewDisposeScope())
            {
                var (weights, naming) = PyTorchWeights.ToEncoderKeys(raw);
                log?.Invoke($"FromPyTorch: '{path}' has {naming.Describe()}{(naming.HasNoQkvBias ? "; its attention has no qkv bias, so q_bias and v_bias are zero" : string.Empty)}.");
                var normalization = EncoderImport.ResolveNormalization(options, naming, args, path, log);
                architecture = options.Architecture is { } a
                    ? a with { Normalization = normalization }
                    : EncoderImport.Infer(weights, options, normalization, path, log);
                architecture.Validate();
            }

            var module = new VisionTransformerEncoder(architecture);
            try
            {
                using (var scope = NewDisposeScope())
                {
                    var (weights, _) = PyTorchWeights.ToEncoderKeys(raw);
                    EncoderImport.FitPositionTable(weights, architecture, path, log);
                    EncoderWeights.Load(module, weights, strict: true, source: $"'{path}'");
                }

                return new BootMaeEncoder(module, architecture);
            }
            catch
            {
                module.Dispose();
                throw;
            }
        }
        finally
        {
            owned.ForEach(t => t.Dispose());
        }
    }

    /// <summary>Writes the weights as <c>.safetensors</c> under the official key names, for PyTorch (<c>safetensors.torch.load_file</c>);
    /// the header's metadata records the input normalisation, which <see cref="FromPyTorch(string, BootMaePyTorchImportOptions?)"/> reads back.</summary>
    /// <param name="path">The file to write (replaced atomically).</param>
    public void ExportSafetensors(string path)
    {
        using var use = _gate.Enter(this);
        using var scope = NewDisposeScope();
        WriteAtomically(path, stream => Safetensors.Save(stream, Module.state_dict(), PyTorchWeights.TrainingArgs.ToMetadata(Architecture.Normalization)));
    }

    /// <summary>
    /// Writes the encoder as an ONNX model (opset 17, standard operators, float32) that gives what
    /// <c>BootMaeFeaturize</c> gives for the same settings, for ML.NET's <c>ApplyOnnxModel</c> or ONNX Runtime, with
    /// no TorchSharp or libtorch at serving time.
    /// </summary>
    /// <param name="path">The <c>.onnx</c> file to write, replaced atomically (a crash leaves the old file or the new one). Its folder must exist.</param>
    /// <param name="pooling">How the tokens become the output, as in <c>BootMaeFeaturize</c>.</param>
    /// <param name="sourceBlock">0-based block whose output (after the final LayerNorm) is pooled; <c>null</c> means the last block.</param>
    /// <remarks>
    /// Input <c>pixels</c>: float32 <c>[batch, 3, ImageSize, ImageSize]</c>, planar RGB with values 0..255, which is what
    /// <c>mlContext.Transforms.ExtractPixels</c> gives with its defaults; scaling, clamping, the grey conversion of a
    /// 1-channel encoder (BT.601 luma) and the architecture's input normalisation happen inside the graph. Output <c>features</c>:
    /// float32 <c>[batch, D]</c>, or <c>[batch, N, D]</c> for <see cref="BootMaePooling.Tokens"/>. The batch dimension
    /// is dynamic. The architecture, pooling and block are in the model's metadata (keys <c>bootmae.*</c>).
    /// </remarks>
    /// <exception cref="ObjectDisposedException">The encoder is disposed.</exception>
    /// <exception cref="DirectoryNotFoundException">The folder of <paramref name="path"/> does not exist.</exception>
    /// <exception cref="NotSupportedException">The weights are too large for a single-file ONNX model (2 GiB).</exception>
    public void ExportOnnx(string path, BootMaePooling pooling = BootMaePooling.Mean, int? sourceBlock = null)
    {
        if (_gate.IsClosed)
        {
            throw new ObjectDisposedException(nameof(BootMaeEncoder), "This BootMaeEncoder is disposed, so it has no weights left to export. Export it before disposing it, or load it again with BootMaeEncoder.Load.");
        }

        var full = OnnxExport.BootMaeOnnxExporter.ResolveTarget(path);
        if (!Enum.IsDefined(pooling))
        {
            throw new ArgumentOutOfRangeException(nameof(pooling), pooling, "Pooling must be Mean, Cls or Tokens.");
        }

        int block = sourceBlock ?? Architecture.Depth - 1;
        if (block < 0 || block >= Architecture.Depth)
        {
            throw new ArgumentOutOfRangeException(nameof(sourceBlock), sourceBlock, $"SourceBlock must be in [0, {Architecture.Depth - 1}] for this {Architecture.Depth}-block encoder.");
        }

        using var use = _gate.Enter(this);
        OnnxExport.BootMaeOnnxExporter.Write(OnnxExport.BootMaeOnnxExporter.BuildEncoder(Module, Architecture, pooling, block), full);
    }
}
