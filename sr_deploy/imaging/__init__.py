"""Images in and out of the network: I/O, MATLAB bicubic resize, PSNR/SSIM, tiled upscaling.

Import from the submodules (``sr_deploy.imaging.io``, ``.resize``, ``.metrics``, ``.tiling``); this
package file stays empty so that importing one of them does not pull in OpenCV or the others.
"""
