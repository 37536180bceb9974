"""Named index sets of MediaPipe's 478-point face mesh that the rig needs.

"Left" and "Right" are the subject's sides, as in ARKit (the subject's left eye is on the
image's right). Contours run from one corner to the other so that matching positions on
the upper and lower contours face each other.
"""

FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)

# Lips, image-left corner to image-right corner.
MOUTH_CORNERS = (61, 291)
INNER_CORNERS = (78, 308)
UPPER_LIP_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
UPPER_LIP_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_LIP_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
LOWER_LIP_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
UPPER_LIP_MID = (0, 11, 12, 13)
LOWER_LIP_MID = (14, 15, 16, 17)

# Eyes, outer corner first; upper and lower contours share both corners.
RIGHT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
LEFT_EYE_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
RIGHT_IRIS = (468, 469, 470, 471, 472)
LEFT_IRIS = (473, 474, 475, 476, 477)

# Brows, inner end first.
RIGHT_BROW = (107, 66, 105, 63, 70, 55, 65, 52, 53, 46)
LEFT_BROW = (336, 296, 334, 293, 300, 285, 295, 282, 283, 276)
RIGHT_BROW_INNER = (107, 66, 55, 65)
LEFT_BROW_INNER = (336, 296, 285, 295)
RIGHT_BROW_OUTER = (63, 70, 53, 46)
LEFT_BROW_OUTER = (293, 300, 283, 276)

# Cheek surface below each eye, used by smiles and squints.
RIGHT_CHEEK = (117, 118, 119, 100, 101, 50, 36, 205, 187, 123, 116, 111)
LEFT_CHEEK = (346, 347, 348, 329, 330, 280, 266, 425, 411, 352, 345, 340)

NOSE_TIP = 1
FOREHEAD = 10
CHIN = 152
