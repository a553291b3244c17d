using Microsoft.ML.BootMae.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Builds the decoder input [cls ; tokens in original patch order] from the projected encoder output and mask tokens.
internal static class DecoderSequence
{
    // projected: B×(1+N_v)×d. maskPositionTable (1×(1+N)×d) is added to the mask tokens only, at their own positions.
    public static Tensor Assemble(Tensor projected, Tensor maskToken, Tensor? maskPositionTable, MaskBatch masks)
    {
        long b = projected.shape[0];
        long d = projected.shape[2];
        var cls = projected[.., ..1];
        var visible = projected[.., 1..];
        var idsMasked = masks.IdsMasked;
        long k = idsMasked.shape[1];
        var tokens = maskToken.expand(b, k, d);
        if (maskPositionTable is not null)
        {
            var pe = maskPositionTable[.., 1..].expand(b, -1, -1).gather(1, idsMasked.unsqueeze(-1).expand(-1, -1, d));
            tokens = tokens.add(pe, TorchScalars.One);
        }

        var unshuffled = cat(new[] { visible, tokens }, 1).gather(1, masks.IdsRestore.unsqueeze(-1).expand(-1, -1, d));
        return cat(new[] { cls, unshuffled }, 1);
    }
}
