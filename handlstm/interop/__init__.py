"""Interoperation with other code: swapping torch's recurrent modules inside a model
(:mod:`~handlstm.interop.swap`, :mod:`~handlstm.interop.subclass`) and opacus
(:mod:`~handlstm.interop.opacus`, imported only with opacus). The core never imports these.
"""
